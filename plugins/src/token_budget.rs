//! Token budgets: tokens per window per client id, team or client address.
//!
//! A call is admitted while every budget of its caller has room, and is charged at once an
//! estimate of its prompt; as its answer streams, the caller settles the running total (the
//! usage the provider has reported so far, or an estimate from the events seen), and at the
//! end the answer's real usage, which takes back what the estimates put above it. A settle
//! that finds a budget spent tells the caller, who ends the stream: a caller overshoots its
//! budget by what its streams deliver between two settles, not by whole answers.
//!
//! With a shared store (`[rate_limit_store]`) every instance counts in the same windows, so
//! N instances allow one budget, not N; the local windows are charged too, and decide while
//! the store cannot answer (or the call is refused, as the operator chose).

use std::net::IpAddr;
use std::sync::Arc;

use serde::Deserialize;

use crate::plugins::rate_limit::{fnv128, StoreFallback};
use crate::rate_window::{now_ms, RateWindow, SharedHit, SharedWindows, WindowSpec, WindowState};
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

/// Why a call is not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BudgetRefusal {
    Spent(Exhausted),
    /// The shared store cannot answer and the budgets are set to refuse then.
    StoreUnavailable,
}

/// One limit and its local counters (kept across reloads by the caller while the limit's
/// definition does not change).
pub struct BudgetLimit {
    pub config: TokenLimitConfig,
    pub window: Arc<RateWindow>,
}

impl BudgetLimit {
    fn shared_key(&self, key: u128) -> String {
        let spec = self.config.spec();
        format!(
            "rampart:tokens:{}:{}:{}:{key:032x}",
            self.config.name, spec.limit, spec.window_ms
        )
    }

    fn exhausted(&self, state: &WindowState) -> Exhausted {
        Exhausted {
            limit: self.config.name.clone(),
            retry_after_seconds: state.reset_ms.div_ceil(1000).max(1),
        }
    }
}

/// One call's account: the budgets that count it, and the tokens charged to them so far.
#[derive(Debug, Default)]
pub struct Tab {
    entries: Vec<(usize, u128)>,
    charged: u64,
}

impl Tab {
    /// Tokens charged so far.
    pub fn charged(&self) -> u64 {
        self.charged
    }

    /// Whether any budget counts this call.
    pub fn counts(&self) -> bool {
        !self.entries.is_empty()
    }
}

pub struct TokenBudget {
    limits: Vec<BudgetLimit>,
    store: Option<Arc<dyn SharedWindows>>,
    fallback: StoreFallback,
}

impl TokenBudget {
    pub fn new(
        limits: Vec<BudgetLimit>,
        store: Option<Arc<dyn SharedWindows>>,
        fallback: StoreFallback,
    ) -> Self {
        TokenBudget {
            limits,
            store,
            fallback,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.limits.is_empty()
    }

    /// Whether the budgets count in a store shared by every instance.
    pub fn is_shared(&self) -> bool {
        self.store.is_some()
    }

    /// The caller's account, charged nothing yet.
    pub fn tab(&self, caller: Caller<'_>) -> Tab {
        Tab {
            entries: self
                .limits
                .iter()
                .enumerate()
                .filter_map(|(i, l)| l.config.key.of(caller).map(|k| (i, k)))
                .collect(),
            charged: 0,
        }
    }

    fn hits(&self, tab: &Tab, amount: i64) -> Vec<SharedHit> {
        tab.entries
            .iter()
            .map(|&(i, key)| {
                let limit = &self.limits[i];
                SharedHit {
                    key: limit.shared_key(key),
                    spec: limit.config.spec(),
                    amount,
                }
            })
            .collect()
    }

    /// The first spent budget among `states` (one per entry of `tab`).
    fn spent(&self, tab: &Tab, states: &[WindowState]) -> Option<Exhausted> {
        tab.entries
            .iter()
            .zip(states)
            .find(|(_, s)| !s.allowed)
            .map(|(&(i, _), s)| self.limits[i].exhausted(s))
    }

    /// The store, when it is worth asking now.
    fn store(&self) -> Option<&dyn SharedWindows> {
        self.store.as_deref().filter(|s| s.available())
    }

    /// Admits a call while every budget of the caller has room, charging `estimate` tokens
    /// at once (all budgets or none).
    pub async fn admit(&self, tab: &mut Tab, estimate: u64) -> Result<(), BudgetRefusal> {
        self.admit_at(tab, estimate, now_ms()).await
    }

    async fn admit_at(&self, tab: &mut Tab, estimate: u64, now: u64) -> Result<(), BudgetRefusal> {
        if tab.entries.is_empty() {
            return Ok(());
        }
        let amount = u32::try_from(estimate).unwrap_or(u32::MAX);
        // The store counts the estimate when every budget has room (all or none); the
        // local counters decide when it cannot answer, unless the operator said refuse.
        let shared = match self.store() {
            Some(store) => store
                .hit(&self.hits(tab, i64::from(amount)))
                .await
                .ok()
                .filter(|states| states.len() == tab.entries.len()),
            None => None,
        };
        let states = match shared {
            Some(states) => states,
            None if self.store.is_some() && self.fallback == StoreFallback::Refuse => {
                return Err(BudgetRefusal::StoreUnavailable);
            }
            None => tab
                .entries
                .iter()
                .map(|&(i, key)| self.limits[i].window.peek(key, now))
                .collect(),
        };
        if let Some(spent) = self.spent(tab, &states) {
            return Err(BudgetRefusal::Spent(spent));
        }
        for &(i, key) in &tab.entries {
            self.limits[i].window.charge(key, now, i64::from(amount));
        }
        tab.charged = u64::from(amount);
        Ok(())
    }

    /// Brings the call's charge to `total` tokens (taking back what an estimate put above
    /// it); an error when a budget of the caller is now spent.
    pub async fn settle(&self, tab: &mut Tab, total: u64) -> Result<(), Exhausted> {
        self.settle_at(tab, total, now_ms()).await
    }

    async fn settle_at(&self, tab: &mut Tab, total: u64, now: u64) -> Result<(), Exhausted> {
        if tab.entries.is_empty() || total == tab.charged {
            return Ok(());
        }
        let delta = i64::try_from(total)
            .unwrap_or(i64::MAX)
            .saturating_sub(i64::try_from(tab.charged).unwrap_or(i64::MAX));
        tab.charged = total;
        let local: Vec<WindowState> = tab
            .entries
            .iter()
            .map(|&(i, key)| self.limits[i].window.charge(key, now, delta))
            .collect();
        let states = match self.store() {
            Some(store) => match store.charge(&self.hits(tab, delta)).await {
                Ok(states) if states.len() == tab.entries.len() => states,
                _ => local,
            },
            None => local,
        };
        match self.spent(tab, &states) {
            Some(spent) => Err(spent),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::now_or_never;
    use crate::rate_window::{StoreError, StoreFuture};
    use std::collections::HashMap;
    use std::sync::Mutex;

    const T0: u64 = 1_000_000;

    fn limits(text: &str) -> Vec<BudgetLimit> {
        #[derive(Deserialize)]
        struct File {
            limits: Vec<TokenLimitConfig>,
        }
        let file: File = toml::from_str(text).expect("parses");
        file.limits
            .into_iter()
            .map(|config| BudgetLimit {
                window: Arc::new(RateWindow::new(config.spec(), config.max_keys)),
                config,
            })
            .collect()
    }

    fn local(text: &str) -> TokenBudget {
        TokenBudget::new(limits(text), None, StoreFallback::Local)
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

    fn caller(w: &Identity) -> Caller<'_> {
        Caller {
            identity: Some(w),
            client: IpAddr::from([10, 0, 0, 1]),
        }
    }

    fn admit(b: &TokenBudget, tab: &mut Tab, estimate: u64, now: u64) -> Result<(), BudgetRefusal> {
        now_or_never(b.admit_at(tab, estimate, now)).expect("never waits")
    }

    fn settle(b: &TokenBudget, tab: &mut Tab, total: u64, now: u64) -> Result<(), Exhausted> {
        now_or_never(b.settle_at(tab, total, now)).expect("never waits")
    }

    /// One call: admitted on `estimate`, then settled at `used`.
    fn call(
        b: &TokenBudget,
        w: &Identity,
        estimate: u64,
        used: u64,
        now: u64,
    ) -> Result<(), BudgetRefusal> {
        let mut tab = b.tab(caller(w));
        admit(b, &mut tab, estimate, now)?;
        let _ = settle(b, &mut tab, used, now);
        Ok(())
    }

    const TEAM: &str =
        r#"limits = [{ name = "TeamTPM", key = "team", tokens = 1000, window_seconds = 60 }]"#;

    #[test]
    fn a_budget_refuses_once_spent_and_recovers_with_the_window() {
        let b = local(TEAM);
        let (a1, a2, b1) = (
            who("a1", Some("alpha")),
            who("a2", Some("alpha")),
            who("b1", Some("beta")),
        );
        assert_eq!(call(&b, &a1, 0, 600, T0), Ok(()));
        assert_eq!(call(&b, &a2, 0, 400, T0 + 10), Ok(()), "600 of 1000 used");
        let Err(BudgetRefusal::Spent(spent)) = call(&b, &a1, 0, 1, T0 + 20) else {
            panic!("1000 of 1000 used");
        };
        assert_eq!(spent.limit, "TeamTPM");
        assert!((1..=64).contains(&spent.retry_after_seconds), "{spent:?}");
        assert_eq!(call(&b, &b1, 0, 1, T0 + 20), Ok(()), "another team");
        let later = T0 + 20 + spent.retry_after_seconds * 1000;
        assert_eq!(call(&b, &a1, 0, 1, later), Ok(()), "the window slid");
        let nobody = Caller {
            identity: None,
            client: IpAddr::from([10, 0, 0, 1]),
        };
        assert!(!b.tab(nobody).counts(), "no team, no limit");
    }

    #[test]
    fn a_stream_learns_when_it_crosses_and_the_final_usage_takes_back_the_estimate() {
        let b = local(TEAM);
        let a1 = who("a1", Some("alpha"));
        let mut tab = b.tab(caller(&a1));
        admit(&b, &mut tab, 300, T0).expect("room");
        assert_eq!(tab.charged(), 300);
        assert_eq!(settle(&b, &mut tab, 900, T0 + 100), Ok(()), "900 of 1000");
        let spent = settle(&b, &mut tab, 1000, T0 + 200).expect_err("crossed");
        assert_eq!(spent.limit, "TeamTPM");
        // The provider's usage says 700 in all: the estimates above it come back.
        assert_eq!(settle(&b, &mut tab, 700, T0 + 300), Ok(()));
        assert_eq!(call(&b, &a1, 0, 300, T0 + 400), Ok(()), "300 left");
        assert!(call(&b, &a1, 0, 1, T0 + 500).is_err(), "now spent");
    }

    #[test]
    fn huge_usage_saturates() {
        let b = local(r#"limits = [{ name = "IP", key = "client_ip", tokens = 10 }]"#);
        let c = Caller {
            identity: None,
            client: IpAddr::from([192, 0, 2, 1]),
        };
        let mut tab = b.tab(c);
        admit(&b, &mut tab, u64::MAX, 0).expect("room at first");
        assert!(settle(&b, &mut tab, u64::MAX, 1).is_err());
        assert!(admit(&b, &mut b.tab(c), 0, 2).is_err());
    }

    /// A store that fails on demand, standing in for Redis (the integration tests use a
    /// real one): windows by key, with the store's all-or-none and charge semantics.
    #[derive(Default)]
    struct Store {
        down: Mutex<bool>,
        windows: Mutex<HashMap<String, Arc<RateWindow>>>,
    }

    impl Store {
        fn apply(&self, hits: &[SharedHit], enforce: bool) -> Result<Vec<WindowState>, StoreError> {
            if *self.down.lock().expect("lock") {
                return Err(StoreError("down".into()));
            }
            let mut windows = self.windows.lock().expect("lock");
            let ws: Vec<Arc<RateWindow>> = hits
                .iter()
                .map(|h| {
                    windows
                        .entry(h.key.clone())
                        .or_insert_with(|| Arc::new(RateWindow::new(h.spec, 10)))
                        .clone()
                })
                .collect();
            let now = now_ms();
            if enforce && ws.iter().any(|w| !w.peek(0, now).allowed) {
                return Ok(ws.iter().map(|w| w.peek(0, now)).collect());
            }
            Ok(ws
                .iter()
                .zip(hits)
                .map(|(w, h)| w.charge(0, now, h.amount))
                .collect())
        }
    }

    impl SharedWindows for Store {
        fn hit<'a>(&'a self, hits: &'a [SharedHit]) -> StoreFuture<'a> {
            Box::pin(async move { self.apply(hits, true) })
        }
        fn charge<'a>(&'a self, hits: &'a [SharedHit]) -> StoreFuture<'a> {
            Box::pin(async move { self.apply(hits, false) })
        }
        fn available(&self) -> bool {
            true
        }
    }

    #[test]
    fn instances_sharing_a_store_spend_one_budget_and_fall_back_as_told() {
        let store = Arc::new(Store::default());
        let instance = |fallback| TokenBudget::new(limits(TEAM), Some(store.clone()), fallback);
        let (one, two) = (
            instance(StoreFallback::Local),
            instance(StoreFallback::Local),
        );
        let a1 = who("a1", Some("alpha"));
        let now = now_ms();
        assert_eq!(call(&one, &a1, 0, 700, now), Ok(()));
        let mut tab = two.tab(caller(&a1));
        admit(&two, &mut tab, 100, now).expect("room for the second instance too");
        assert!(
            settle(&two, &mut tab, 300, now).is_err(),
            "700 + 300: spent across instances"
        );
        assert!(matches!(
            call(&one, &a1, 0, 1, now),
            Err(BudgetRefusal::Spent(_))
        ));

        *store.down.lock().expect("lock") = true;
        let three = instance(StoreFallback::Local);
        assert_eq!(
            call(&three, &a1, 0, 10, now),
            Ok(()),
            "its own counters decide"
        );
        let strict = instance(StoreFallback::Refuse);
        assert_eq!(
            call(&strict, &a1, 0, 10, now),
            Err(BudgetRefusal::StoreUnavailable)
        );
    }
}
