//! `ip_reputation`: named IP lists (the seeds' Amazon IP reputation, reconnaissance and DDoS
//! groups), each with its own action, and an allow list that no list overrides.
//!
//! Lists are matched on the socket peer; a list may also match the client that trusted
//! proxies name in `X-Forwarded-For`. A blocking list that matches the peer also refuses
//! the connection at accept, before TLS or HTTP work is spent on it.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;

use crate::prefix_table::PrefixTable;
use crate::registry::{BuildContext, BuildError};
use crate::{Action, Deny, Finding, Plugin, RequestView, Verdict};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpReputationConfig {
    /// Networks never matched by any list (the VPC, monitoring hosts).
    #[serde(default)]
    pub allow: Vec<IpNet>,
    /// List files of allowed networks, relative to the rules directory.
    #[serde(default)]
    pub allow_files: Vec<String>,
    pub lists: Vec<ListConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListConfig {
    /// The rule id a match reports (`AWSManagedIPReputationList`, ...).
    pub name: String,
    /// List files, relative to the rules directory.
    #[serde(default)]
    pub files: Vec<String>,
    /// Networks written inline.
    #[serde(default)]
    pub networks: Vec<IpNet>,
    #[serde(default)]
    pub action: Action,
    /// Which addresses the list is matched on.
    #[serde(default, rename = "match")]
    pub addresses: Addresses,
    /// Refuse a matching peer's connections at accept (blocking lists only).
    #[serde(default = "yes")]
    pub drop_connections: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Addresses {
    /// The socket peer only.
    #[default]
    Peer,
    /// The client named by trusted proxies (the peer when there are none).
    Client,
    Both,
}

struct IpList {
    name: String,
    table: PrefixTable,
    action: Action,
    addresses: Addresses,
    drop_connections: bool,
}

pub struct IpReputation {
    allow: PrefixTable,
    lists: Vec<IpList>,
}

impl IpReputation {
    pub fn build(config: IpReputationConfig, ctx: &dyn BuildContext) -> Result<Self, BuildError> {
        if config.lists.is_empty() {
            return Err(BuildError::invalid("ip_reputation", "`lists` is empty"));
        }
        let table = |files: &[String], inline: &[IpNet]| -> Result<PrefixTable, BuildError> {
            let mut nets = ctx.ip_lists(files)?;
            nets.extend_from_slice(inline);
            Ok(PrefixTable::new(nets))
        };
        let mut lists = Vec::with_capacity(config.lists.len());
        for l in config.lists {
            if l.files.is_empty() && l.networks.is_empty() {
                return Err(BuildError::invalid(
                    "ip_reputation",
                    &format!("list {:?} has neither `files` nor `networks`", l.name),
                ));
            }
            lists.push(IpList {
                table: table(&l.files, &l.networks)?,
                name: l.name,
                action: l.action,
                addresses: l.addresses,
                drop_connections: l.drop_connections,
            });
        }
        Ok(IpReputation {
            allow: table(&config.allow_files, &config.allow)?,
            lists,
        })
    }

    /// The addresses `list` looks at for this request, allowed ones left out.
    fn addresses<'a>(
        &'a self,
        list: &IpList,
        req: &RequestView<'_>,
    ) -> impl Iterator<Item = (&'static str, IpAddr)> + 'a {
        let peer = matches!(list.addresses, Addresses::Peer | Addresses::Both)
            .then_some(("peer", req.peer));
        let client = (matches!(list.addresses, Addresses::Client | Addresses::Both)
            && (req.client != req.peer || list.addresses == Addresses::Client))
            .then_some(("client", req.client));
        peer.into_iter()
            .chain(client)
            .filter(|(_, ip)| !self.allow.contains(*ip))
    }
}

impl Plugin for IpReputation {
    fn name(&self) -> &'static str {
        "ip_reputation"
    }

    fn check_reporting(
        &self,
        req: &RequestView<'_>,
        report: &mut dyn FnMut(&Finding<'_>),
    ) -> Verdict {
        for list in &self.lists {
            for (location, ip) in self.addresses(list, req) {
                if !list.table.contains(ip) {
                    continue;
                }
                if list.action == Action::Block {
                    return Verdict::Deny(Deny::new(403, list.name.clone()));
                }
                let excerpt = ip.to_string();
                report(&Finding {
                    rule: &list.name,
                    counted_only: true,
                    location,
                    excerpt: &excerpt,
                });
            }
        }
        Verdict::Continue
    }

    fn refuses_connection(&self, peer: IpAddr) -> bool {
        !self.allow.contains(peer)
            && self.lists.iter().any(|l| {
                l.action == Action::Block
                    && l.drop_connections
                    && l.addresses != Addresses::Client
                    && l.table.contains(peer)
            })
    }

    fn explain(&self, req: &RequestView<'_>) -> Vec<String> {
        let mut lines = Vec::new();
        for (location, ip) in [("peer", req.peer), ("client", req.client)] {
            if self.allow.contains(ip) {
                lines.push(format!("{location} {ip} is on the allow list"));
            }
        }
        for list in &self.lists {
            for (location, ip) in self.addresses(list, req) {
                if list.table.contains(ip) {
                    lines.push(format!(
                        "{location} {ip} is on list {} ({})",
                        list.name,
                        list.action.as_str()
                    ));
                }
            }
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testing::TestRequest;
    use crate::registry::tests::TestContext;

    fn plugin(config: &str, ctx: &TestContext) -> Result<IpReputation, BuildError> {
        let config: IpReputationConfig = toml::from_str(config).expect("config parses");
        IpReputation::build(config, ctx)
    }

    const LISTS: &str = r#"
        allow = ["10.20.0.0/16"]
        [[lists]]
        name = "AWSManagedIPReputationList"
        files = ["ip/reputation.txt"]
        [[lists]]
        name = "AWSManagedReconnaissanceList"
        networks = ["198.51.100.0/24"]
        action = "count"
        [[lists]]
        name = "AWSManagedIPDDoSList"
        networks = ["192.0.2.0/24", "2001:db8:dd05::/48"]
        match = "both"
    "#;

    fn ctx() -> TestContext {
        TestContext::new().with_file(
            "ip/reputation.txt",
            "; bad actors\n203.0.113.0/24 ; SBL1\n10.20.5.5\n",
        )
    }

    fn judge(p: &IpReputation, peer: &str, client: &str) -> (Verdict, Vec<String>) {
        let req = TestRequest::new(peer, "/");
        let mut view = req.view();
        view.client = client.parse().expect("client");
        let mut found = Vec::new();
        let v = p.check_reporting(&view, &mut |f| {
            found.push(format!("{}@{}={}", f.rule, f.location, f.excerpt))
        });
        (v, found)
    }

    #[test]
    fn each_list_acts_with_its_own_action() {
        let p = plugin(LISTS, &ctx()).expect("builds");
        let (v, _) = judge(&p, "203.0.113.9", "203.0.113.9");
        assert_eq!(
            v,
            Verdict::Deny(Deny::new(403, "AWSManagedIPReputationList"))
        );
        let (v, found) = judge(&p, "198.51.100.4", "198.51.100.4");
        assert_eq!(v, Verdict::Continue);
        assert_eq!(found, ["AWSManagedReconnaissanceList@peer=198.51.100.4"]);
        let (v, _) = judge(&p, "2001:db8:dd05:1::9", "2001:db8:dd05:1::9");
        assert_eq!(v, Verdict::Deny(Deny::new(403, "AWSManagedIPDDoSList")));
        assert_eq!(judge(&p, "8.8.8.8", "8.8.8.8").0, Verdict::Continue);
    }

    #[test]
    fn the_client_is_matched_only_where_the_list_says() {
        let p = plugin(LISTS, &ctx()).expect("builds");
        // The reputation list looks at the peer only; the DDoS list at both.
        assert_eq!(judge(&p, "8.8.8.8", "203.0.113.9").0, Verdict::Continue);
        assert!(matches!(
            judge(&p, "8.8.8.8", "192.0.2.1").0,
            Verdict::Deny(_)
        ));
    }

    #[test]
    fn the_allow_list_beats_every_list() {
        let p = plugin(LISTS, &ctx()).expect("builds");
        assert_eq!(judge(&p, "10.20.5.5", "10.20.5.5").0, Verdict::Continue);
        assert!(!p.refuses_connection("10.20.5.5".parse().expect("ip")));
    }

    #[test]
    fn only_blocking_peer_lists_refuse_connections() {
        let p = plugin(LISTS, &ctx()).expect("builds");
        assert!(p.refuses_connection("203.0.113.1".parse().expect("ip")));
        assert!(p.refuses_connection("::ffff:192.0.2.7".parse().expect("ip")));
        assert!(
            !p.refuses_connection("198.51.100.4".parse().expect("ip")),
            "count list"
        );
        assert!(!p.refuses_connection("8.8.8.8".parse().expect("ip")));
    }

    #[test]
    fn a_bad_list_line_is_reported_with_file_and_line() {
        let ctx = TestContext::new().with_file("ip/reputation.txt", "203.0.113.0/24\nnot-an-ip\n");
        let e = plugin(LISTS, &ctx)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.starts_with("ip/reputation.txt:2:") && e.contains("not-an-ip"),
            "{e}"
        );
    }
}
