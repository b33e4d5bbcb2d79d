use std::net::IpAddr;

use http::{HeaderMap, Method};

/// Everything a plugin may look at, built once per request by the proxy.
///
/// Borrowed, so that building it costs no allocation beyond the normalised path.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// Name of the listener the request arrived on (`web`, `langfuse`, ...).
    pub listener: &'a str,
    /// Name of the route the request matched.
    pub route: &'a str,
    /// The socket peer: the only address trusted for network-based access decisions.
    pub peer: IpAddr,
    /// The client as derived from trusted proxies' `X-Forwarded-For`; equals `peer` otherwise.
    pub client: IpAddr,
    pub method: &'a Method,
    /// Percent-decoded, dot segments resolved, duplicate slashes collapsed; case preserved.
    pub path: &'a str,
    /// The raw query string, without the `?`.
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// The request body when it was read for inspection (see the proxy's body handling).
    pub body: Option<&'a [u8]>,
}
