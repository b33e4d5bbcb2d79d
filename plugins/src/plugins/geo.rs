//! `geo`: the client's country, from a MaxMind-format database (GeoLite2 Country or City,
//! DB-IP Lite, which operators download under their own licence), against an allow list or
//! a block list of ISO 3166 country codes: the edge's optional geographic restriction.
//!
//! The database is read whole when the rules load, so a reload picks up a new file and a
//! missing or corrupt one is a reload error naming it (the old rules keep serving).

use std::net::IpAddr;

use serde::Deserialize;

use crate::registry::{BuildContext, BuildError};
use crate::{Deny, Finding, Plugin, RequestView, Verdict};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MatchOn {
    /// The client as trusted proxies name it (`X-Forwarded-For`), else the socket peer.
    #[default]
    Client,
    /// The socket peer.
    Peer,
}

/// What to do with an address the database does not place (private networks, new ranges).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unplaced {
    #[default]
    Allow,
    Block,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeoConfig {
    /// The `.mmdb` file, relative to the rules directory.
    pub database: String,
    /// Countries let through; every other is refused. Exclusive with `block`.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Countries refused. Exclusive with `allow`.
    #[serde(default)]
    pub block: Vec<String>,
    /// Routes the restriction applies to; empty, every route of the listener.
    #[serde(default)]
    pub routes: Vec<String>,
    #[serde(default, rename = "match")]
    pub match_on: MatchOn,
    #[serde(default)]
    pub unplaced: Unplaced,
}

enum Countries {
    Allow(Vec<[u8; 2]>),
    Block(Vec<[u8; 2]>),
}

pub struct Geo {
    reader: maxminddb::Reader<Vec<u8>>,
    countries: Countries,
    routes: Vec<String>,
    match_on: MatchOn,
    unplaced: Unplaced,
}

/// The parts of a GeoLite2 / DB-IP country record read here.
#[derive(Deserialize)]
struct Record<'a> {
    #[serde(borrow)]
    country: Option<Names<'a>>,
    #[serde(borrow)]
    registered_country: Option<Names<'a>>,
}

#[derive(Deserialize)]
struct Names<'a> {
    iso_code: Option<&'a str>,
}

impl Geo {
    pub fn build(config: GeoConfig, ctx: &dyn BuildContext) -> Result<Self, BuildError> {
        let invalid = |m: String| BuildError::invalid("geo", &m);
        let codes = |list: &[String]| -> Result<Vec<[u8; 2]>, BuildError> {
            list.iter()
                .map(|c| match c.as_bytes() {
                    [a, b] if a.is_ascii_uppercase() && b.is_ascii_uppercase() => Ok([*a, *b]),
                    _ => Err(invalid(format!(
                        "{c:?} is not an ISO 3166 country code (two capital letters, like \"DE\")"
                    ))),
                })
                .collect()
        };
        let countries = match (config.allow.is_empty(), config.block.is_empty()) {
            (false, true) => Countries::Allow(codes(&config.allow)?),
            (true, false) => Countries::Block(codes(&config.block)?),
            _ => return Err(invalid("give exactly one of `allow` and `block`".into())),
        };
        let (file, bytes) = ctx.rule_bytes(&config.database)?;
        let reader = maxminddb::Reader::from_source(bytes).map_err(|e| BuildError::RuleFile {
            file: file.clone(),
            line: None,
            message: format!("not a MaxMind database: {e}"),
        })?;
        // A database of anything but countries reads as "no country" for every address,
        // which an allow list would turn into refusing everyone: checked at load.
        let kind = &reader.metadata().database_type;
        if !(kind.contains("Country") || kind.contains("City") || kind.contains("country")) {
            return Err(BuildError::RuleFile {
                file,
                line: None,
                message: format!(
                    "a {kind:?} database has no countries (want a Country or City one)"
                ),
            });
        }
        Ok(Geo {
            reader,
            countries,
            routes: config.routes,
            match_on: config.match_on,
            unplaced: config.unplaced,
        })
    }

    /// The ISO code of `ip`'s country (else its registered country), if the database has it.
    pub fn country(&self, ip: IpAddr) -> Option<[u8; 2]> {
        let record: Record<'_> = self.reader.lookup(ip).ok()?.decode().ok().flatten()?;
        let code = record
            .country
            .and_then(|c| c.iso_code)
            .or(record.registered_country.and_then(|c| c.iso_code))?;
        match code.as_bytes() {
            [a, b] => Some([*a, *b]),
            _ => None,
        }
    }
}

impl Plugin for Geo {
    fn route_names(&self) -> Vec<&str> {
        self.routes.iter().map(String::as_str).collect()
    }

    fn name(&self) -> &'static str {
        "geo"
    }

    fn check_reporting(
        &self,
        req: &RequestView<'_>,
        report: &mut dyn FnMut(&Finding<'_>),
    ) -> Verdict {
        if !self.routes.is_empty() && !self.routes.iter().any(|r| r == req.route) {
            return Verdict::Continue;
        }
        let ip = match self.match_on {
            MatchOn::Client => req.client,
            MatchOn::Peer => req.peer,
        };
        let country = self.country(crate::net::canonical(ip));
        let refused = match (&self.countries, country) {
            (_, None) => self.unplaced == Unplaced::Block,
            (Countries::Allow(list), Some(c)) => !list.contains(&c),
            (Countries::Block(list), Some(c)) => list.contains(&c),
        };
        if !refused {
            return Verdict::Continue;
        }
        let rule = match self.countries {
            Countries::Allow(_) => "geo.not_allowed",
            Countries::Block(_) => "geo.blocked",
        };
        report(&Finding {
            rule,
            counted_only: false,
            location: "client:country",
            excerpt: country
                .as_ref()
                .and_then(|c| std::str::from_utf8(c).ok())
                .unwrap_or("unknown"),
        });
        Verdict::Deny(Deny::new(403, rule))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::tests::TestContext;

    fn build(config: &str, ctx: &TestContext) -> Result<Geo, String> {
        let config: GeoConfig = toml::from_str(config).map_err(|e| e.to_string())?;
        Geo::build(config, ctx).map_err(|e| e.to_string())
    }

    #[test]
    fn lists_are_checked_before_the_database_is_read() {
        let ctx = TestContext::new();
        let db = "database = \"geo.mmdb\"\n";
        for (config, wanted) in [
            ("", "exactly one of"),
            ("allow = [\"DE\"]\nblock = [\"KP\"]", "exactly one of"),
            ("block = [\"kp\"]", "\"kp\" is not an ISO 3166"),
            ("block = [\"DEU\"]", "\"DEU\" is not an ISO 3166"),
            ("block = [\"KP\"]\nmatch = \"header\"", "unknown variant"),
        ] {
            let e = build(&format!("{db}{config}"), &ctx)
                .err()
                .unwrap_or_default();
            assert!(e.contains(wanted), "{config}: {e}");
        }
    }

    #[test]
    fn a_missing_or_corrupt_database_is_an_error_naming_the_file() {
        let config = "database = \"geo/countries.mmdb\"\nblock = [\"KP\"]";
        let e = build(config, &TestContext::new()).err().unwrap_or_default();
        assert!(e.contains("geo/countries.mmdb"), "{e}");
        let ctx = TestContext::new().with_file("geo/countries.mmdb", "not a database at all");
        let e = build(config, &ctx).err().unwrap_or_default();
        assert!(
            e.starts_with("geo/countries.mmdb: not a MaxMind database"),
            "{e}"
        );
    }
}
