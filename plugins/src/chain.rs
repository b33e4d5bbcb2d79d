use http::HeaderName;
use serde::Deserialize;

use crate::verdict::Finding;
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
    /// Returns the blocking denial, if any.
    ///
    /// Only plugins that consult a shared store suspend; with none of them, the future is
    /// ready on its first poll.
    pub async fn evaluate<'r>(
        &self,
        req: &'r RequestView<'r>,
        stage: Stage,
        mut on_hit: impl FnMut(Hit<'_>),
    ) -> Option<(&'static str, Deny)> {
        for entry in self.entries.iter().filter(|e| stage.asks(&*e.plugin)) {
            let plugin = entry.plugin.name();
            let shared = entry.plugin.check_shared(req);
            let verdict = match shared {
                Some(future) => future.await,
                None => entry.plugin.check_reporting(req, &mut |f| {
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
            if let Verdict::Deny(deny) = verdict {
                on_hit(Hit {
                    plugin,
                    rule: &deny.rule,
                    action: entry.action,
                    finding: None,
                });
                if entry.action == Action::Block {
                    return Some((entry.plugin.name(), deny));
                }
            }
        }
        None
    }

    /// Whether a blocking plugin of this chain refuses every request from `peer`, so that
    /// its connections can be dropped at accept.
    pub fn refuses_connection(&self, peer: std::net::IpAddr) -> bool {
        self.entries
            .iter()
            .any(|e| e.action == Action::Block && e.plugin.refuses_connection(peer))
    }

    /// Headers that some plugin of this chain consumes and that must be removed before forwarding.
    pub fn consumed_headers(&self) -> &[HeaderName] {
        &self.consumed_headers
    }

    /// Whether some plugin of this chain reads request bodies.
    pub fn inspects_body(&self) -> bool {
        self.entries.iter().any(|e| e.plugin.inspects_body())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
