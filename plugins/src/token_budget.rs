//! Token budgets: tokens per window per client id, team or client address, checked before
//! an LLM request is sent and charged from the usage its answer reports (the tokens of an
//! answer are only known once it has been generated, so a caller may overshoot its budget
//! by one answer, as with Envoy AI Gateway's and Kong's token limits).

use std::net::IpAddr;
use std::sync::Arc;

use serde::Deserialize;

use crate::plugins::rate_limit::fnv128;
use crate::rate_window::{RateWindow, WindowSpec};
use crate::request::Identity;

#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenLimitConfig {
    /// Shown in the refusal and the metrics (`TeamTokensPerMinute`).
    pub name: String,
    pub key: TokenKey,
    /// Prompt and completion tokens together.
    pub tokens: u32,
    #[serde(default = "default_window")]
    pub window_seconds: u64,
    /// Keys remembered at most; the idlest are forgotten first.
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
}

fn default_window() -> u64 {
    60
}

fn default_max_keys() -> usize {
    100_000
}

/// Whose tokens a limit counts. A request without that key (no verified identity, or a
/// client without a team) is not counted by the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKey {
    JwtClientId,
    Team,
    ClientIp,
}

impl TokenLimitConfig {
    pub fn spec(&self) -> WindowSpec {
        WindowSpec {
            limit: self.tokens,
            window_ms: self.window_seconds.max(1) * 1000,
        }
    }
}

/// Who is asking, for the budgets.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    pub identity: Option<&'a Identity>,
    pub client: IpAddr,
}

impl TokenKey {
    fn of(self, caller: Caller<'_>) -> Option<u128> {
        match self {
            TokenKey::JwtClientId => caller.identity.map(|w| fnv128(w.client_id.as_bytes())),
            TokenKey::Team => caller
                .identity
                .and_then(|w| w.team.as_deref())
                .map(|t| fnv128(t.as_bytes())),
            TokenKey::ClientIp => Some(fnv128(caller.client.to_string().as_bytes())),
        }
    }
}

/// A budget that is spent: its name and how long until it has room again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exhausted {
    pub limit: String,
    pub retry_after_seconds: u64,
}

pub struct TokenBudget {
    limits: Vec<(TokenLimitConfig, Arc<RateWindow>)>,
}

impl TokenBudget {
    /// Each limit with its counters (kept across reloads by the caller while the limit's
    /// definition does not change).
    pub fn new(limits: Vec<(TokenLimitConfig, Arc<RateWindow>)>) -> Self {
        TokenBudget { limits }
    }

    pub fn is_empty(&self) -> bool {
        self.limits.is_empty()
    }

    /// Whether every budget of the caller has room left.
    pub fn check(&self, caller: Caller<'_>, now_ms: u64) -> Result<(), Exhausted> {
        for (limit, window) in &self.limits {
            let Some(key) = limit.key.of(caller) else {
                continue;
            };
            let state = window.peek(key, now_ms);
            if !state.allowed {
                return Err(Exhausted {
                    limit: limit.name.clone(),
                    retry_after_seconds: state.reset_ms.div_ceil(1000).max(1),
                });
            }
        }
        Ok(())
    }

    /// Charges the tokens an answer used to every budget of the caller.
    pub fn charge(&self, caller: Caller<'_>, now_ms: u64, tokens: u64) {
        let tokens = u32::try_from(tokens).unwrap_or(u32::MAX);
        for (limit, window) in &self.limits {
            if let Some(key) = limit.key.of(caller) {
                window.add(key, now_ms, tokens);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(text: &str) -> TokenBudget {
        #[derive(Deserialize)]
        struct File {
            limits: Vec<TokenLimitConfig>,
        }
        let file: File = toml::from_str(text).expect("parses");
        TokenBudget::new(
            file.limits
                .into_iter()
                .map(|l| {
                    let w = Arc::new(RateWindow::new(l.spec(), l.max_keys));
                    (l, w)
                })
                .collect(),
        )
    }

    fn who(client: &str, team: Option<&str>) -> Identity {
        Identity {
            client_id: client.into(),
            team: team.map(Into::into),
            scopes: Box::default(),
            upstream_headers: Vec::new(),
            verified_header: None,
        }
    }

    #[test]
    fn a_budget_refuses_once_spent_and_recovers_with_the_window() {
        let b = budget(
            r#"limits = [{ name = "TeamTPM", key = "team", tokens = 1000, window_seconds = 60 }]"#,
        );
        let a1 = who("a1", Some("alpha"));
        let a2 = who("a2", Some("alpha"));
        let b1 = who("b1", Some("beta"));
        let ip = IpAddr::from([10, 0, 0, 1]);
        let caller = |w| Caller {
            identity: Some(w),
            client: ip,
        };
        let t0 = 1_000_000;
        assert_eq!(b.check(caller(&a1), t0), Ok(()));
        b.charge(caller(&a1), t0, 600);
        assert_eq!(b.check(caller(&a2), t0), Ok(()), "600 of 1000 used");
        b.charge(caller(&a2), t0 + 10, 400);
        let spent = b
            .check(caller(&a1), t0 + 20)
            .expect_err("1000 of 1000 used");
        assert_eq!(spent.limit, "TeamTPM");
        assert!((1..=64).contains(&spent.retry_after_seconds), "{spent:?}");
        assert_eq!(b.check(caller(&b1), t0 + 20), Ok(()), "another team");
        let later = t0 + 20 + spent.retry_after_seconds * 1000;
        assert_eq!(b.check(caller(&a1), later), Ok(()), "the window slid");
        let anonymous = Caller {
            identity: None,
            client: ip,
        };
        b.charge(anonymous, t0, 5000);
        assert_eq!(b.check(anonymous, t0), Ok(()), "no team, no limit");
    }

    #[test]
    fn huge_usage_saturates() {
        let b = budget(r#"limits = [{ name = "IP", key = "client_ip", tokens = 10 }]"#);
        let c = Caller {
            identity: None,
            client: IpAddr::from([192, 0, 2, 1]),
        };
        b.charge(c, 0, u64::MAX);
        b.charge(c, 1, u64::MAX);
        assert!(b.check(c, 2).is_err());
    }
}
