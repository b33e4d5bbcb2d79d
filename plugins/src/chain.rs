use http::HeaderName;
use serde::Deserialize;

use std::cell::OnceCell;
use std::net::IpAddr;
use std::sync::Arc;

use crate::net::NetSet;
use crate::request::Identity;
use crate::verdict::Finding;
use crate::waf::Inspections;
use crate::{Deny, Plugin, RequestView, Verdict};

/// What a chain entry does when its plugin denies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Refuse the request.
    #[default]
    Block,
    /// Record the match and let the request go on.
    Count,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Block => "block",
            Action::Count => "count",
        }
    }
}

/// Which plugins a run of the chain asks. A body that arrives after the header (chunked, or
/// larger than what is read up front) is judged in two stages, so that no plugin counts a
/// request twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Every plugin: the body is here, or there is none.
    All,
    /// The plugins that do not read bodies; the others wait for [`Stage::Body`].
    Headers,
    /// The plugins that read bodies, once the body is here.
    Body,
}

impl Stage {
    fn asks(self, plugin: &dyn Plugin) -> bool {
        match self {
            Stage::All => true,
            Stage::Headers => !plugin.inspects_body(),
            Stage::Body => plugin.inspects_body(),
        }
    }
}

pub struct ChainEntry {
    pub plugin: Box<dyn Plugin>,
    pub action: Action,
    /// Socket peers this plugin never judges (`exempt_internal`: the internal networks).
    pub exempt: Option<NetSet>,
}

impl ChainEntry {
    /// Whether this entry judges requests from the socket peer `peer`.
    pub fn judges(&self, peer: IpAddr) -> bool {
        self.exempt.as_ref().is_none_or(|nets| !nets.contains(peer))
    }
}

/// A match reported while a chain runs, for metrics and logs: a plugin's own denial
/// (`finding` is `None`), or one rule that matched inside it.
#[derive(Debug, Clone, Copy)]
pub struct Hit<'a> {
    pub plugin: &'static str,
    pub rule: &'a str,
    pub action: Action,
    pub finding: Option<&'a Finding<'a>>,
}

/// What a run of the chain decided.
#[derive(Debug, Default)]
pub struct Judgement {
    /// The plugin that refused the request, and how.
    pub denied: Option<(&'static str, Deny)>,
    /// Who the caller is, if a plugin verified it.
    pub identity: Option<Arc<Identity>>,
}

/// A listener's ordered plugins. The first blocking denial ends the evaluation.
#[derive(Default)]
pub struct Chain {
    entries: Vec<ChainEntry>,
    consumed_headers: Vec<HeaderName>,
}

impl Chain {
    pub fn new(entries: Vec<ChainEntry>) -> Self {
        let mut consumed_headers: Vec<HeaderName> = Vec::new();
        for entry in &entries {
            for h in entry.plugin.consumed_headers() {
                if !consumed_headers.contains(h) {
                    consumed_headers.push(h.clone());
                }
            }
        }
        Chain {
            entries,
            consumed_headers,
        }
    }

    /// Runs every plugin in order; `on_hit` sees each match, counted or blocking.
    ///
    /// A plugin that authenticates the caller hands the identity to the plugins after it.
    /// Only plugins that consult something outside the process (a shared store, a key
    /// endpoint) suspend; with none of them, the future is ready on its first poll.
    pub async fn evaluate<'r>(
        &self,
        req: &'r RequestView<'r>,
        stage: Stage,
        mut on_hit: impl FnMut(Hit<'_>),
    ) -> Judgement {
        let identity: OnceCell<Arc<Identity>> = OnceCell::new();
        let inspections = Inspections::default();
        let mut view = *req;
        view.inspections = view.inspections.or(Some(&inspections));
        let asked = |e: &&ChainEntry| stage.asks(&*e.plugin) && e.judges(req.peer);
        for entry in self.entries.iter().filter(asked) {
            let plugin = entry.plugin.name();
            let verdict = match entry.plugin.check_shared(&view) {
                Some(future) => future.await,
                None => entry.plugin.check_reporting(&view, &mut |f| {
                    let action = if f.counted_only {
                        Action::Count
                    } else {
                        entry.action
                    };
                    on_hit(Hit {
                        plugin,
                        rule: f.rule,
                        action,
                        finding: Some(f),
                    });
                }),
            };
            match verdict {
                Verdict::Continue => {}
                Verdict::Authenticated(who) => {
                    // The first identity stands: a second authenticating plugin cannot
                    // replace who an earlier one said the caller is.
                    if identity.set(who).is_ok() {
                        view.identity = identity.get().map(|a| &**a);
                    }
                }
                Verdict::Deny(deny) => {
                    on_hit(Hit {
                        plugin,
                        rule: deny.reason(),
                        action: entry.action,
                        finding: None,
                    });
                    if entry.action == Action::Block {
                        return Judgement {
                            denied: Some((plugin, deny)),
                            identity: identity.get().cloned(),
                        };
                    }
                }
            }
        }
        Judgement {
            denied: None,
            identity: identity.get().cloned(),
        }
    }

    /// Whether a blocking plugin of this chain refuses every request from `peer`, so that
    /// its connections can be dropped at accept.
    pub fn refuses_connection(&self, peer: IpAddr) -> bool {
        self.entries.iter().any(|e| {
            e.action == Action::Block && e.judges(peer) && e.plugin.refuses_connection(peer)
        })
    }

    /// Headers that some plugin of this chain consumes and that must be removed before forwarding.
    pub fn consumed_headers(&self) -> &[HeaderName] {
        &self.consumed_headers
    }

    /// Whether some plugin of this chain reads the bodies of requests from `peer`.
    pub fn inspects_body(&self, peer: IpAddr) -> bool {
        self.entries
            .iter()
            .any(|e| e.plugin.inspects_body() && e.judges(peer))
    }

    /// The plugins' names, in order.
    pub fn plugin_names(&self) -> Vec<&'static str> {
        self.entries.iter().map(|e| e.plugin.name()).collect()
    }

    /// Rules held by the plugins (the WAF rule sets).
    pub fn rule_count(&self) -> usize {
        self.entries.iter().map(|e| e.plugin.rule_count()).sum()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
