//! One list per fact about header names, shared by both ways a request leaves rampart
//! (Pingora's proxy to the upstream pools, rampart's own client to LLM providers) and by
//! the block log. A header added here is handled the same on every path.

/// Describe one connection and must not be forwarded (RFC 9110 7.6.1, and the
/// pre-standard `Keep-Alive` and `Proxy-Connection`). `Connection` and `Upgrade` are in
/// [`CONNECTION_AND_FRAMING`]: on the pooled path Pingora handles them itself, since it
/// needs them to carry WebSocket upgrades.
pub const HOP_BY_HOP: &[&str] = &["keep-alive", "proxy-connection", "te", "trailer"];

/// Connection management and message framing, which whoever sends a message on writes
/// for its own connection.
pub const CONNECTION_AND_FRAMING: &[&str] = &[
    "connection",
    "upgrade",
    "host",
    "content-length",
    "transfer-encoding",
    "expect",
];

/// A client's credentials: never logged (the block log shows `<redacted>`), never sent to
/// an LLM provider (rampart sends the provider's key instead). `Proxy-Authorization` is
/// meant for a proxy and goes to no upstream at all.
pub const CREDENTIALS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
    "api-key",
    "x-goog-api-key",
];

/// Who the client is, as proxies tell it: rampart writes these itself.
pub const FORWARDING: &[&str] = &[
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-real-ip",
];

/// Headers rampart sets for the upstream to trust (the caller a `jwt` plugin verified):
/// a client's own copies are dropped on every path, whether or not a plugin sets them.
pub fn is_rampart_own(name: &str) -> bool {
    name.len() > 10 && name.as_bytes()[..10].eq_ignore_ascii_case(b"x-rampart-")
}

pub fn is_credential(name: &str) -> bool {
    CREDENTIALS.iter().any(|c| c.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rampart_own_headers_are_recognised_in_any_case() {
        assert!(is_rampart_own("x-rampart-client-id"));
        assert!(is_rampart_own("X-Rampart-Team"));
        assert!(!is_rampart_own("x-rampart-"));
        assert!(!is_rampart_own("x-rampartx-team"));
        assert!(is_credential("X-Goog-Api-Key"));
        assert!(!is_credential("x-request-id"));
    }

    #[test]
    fn the_lists_do_not_overlap() {
        let lists = [HOP_BY_HOP, CONNECTION_AND_FRAMING, CREDENTIALS, FORWARDING];
        for (i, a) in lists.iter().enumerate() {
            for b in &lists[i + 1..] {
                assert!(a.iter().all(|n| !b.contains(n)), "{a:?} and {b:?}");
            }
        }
    }
}
