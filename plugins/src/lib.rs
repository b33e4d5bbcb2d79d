//! rampart's security plugins: pure decision logic over a [`RequestView`].
//!
//! Nothing here knows about sockets, Pingora or global state, so every plugin can be
//! unit-tested, fuzzed and benchmarked on its own. The `rampart` proxy crate builds a
//! [`RequestView`] once per request and runs a listener's [`Chain`] over it.

pub mod bedrock;
pub mod chain;
pub mod challenge;
pub mod forwarded;
pub mod jws;
pub mod llm_request;
pub mod llm_usage;
pub mod models;
pub mod names;
pub mod net;
pub mod path;
pub mod plugins;
pub mod prefix_table;
pub(crate) mod prehashed;
pub mod rate_window;
pub mod registry;
pub mod request;
pub mod secret;
#[cfg(test)]
pub(crate) mod test_rng;
#[cfg(any(test, feature = "test-issuer"))]
pub mod testing;
pub mod token_budget;
pub mod verdict;
pub mod waf;

pub use chain::{Action, Chain, ChainEntry, Hit, Judgement, Stage};
pub use registry::{BuildContext, BuildError, PluginSpec};
pub use request::{Identity, RequestView};
pub use secret::{SecretValues, SharedSecret};
pub use verdict::{now_or_never, Deny, Finding, Plugin, Verdict};
