use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::waf::judged::LocatedItem;
use crate::waf::Inspections;

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
    /// Headers the chain consumes (credentials for rampart, such as `X-Origin-Verify` and a
    /// verified `Authorization`): removed before the request goes upstream, so inspectors
    /// that protect the upstream skip them.
    pub consumed: &'a [HeaderName],
    /// The request body when it was read for inspection (see the proxy's body handling).
    pub body: Option<&'a [u8]>,
    /// Items of the body the WAFs judged clean before, found in it by whoever read it first
    /// (the proxy's cutting of a body past a window), by where they start: the WAFs step
    /// over them without comparing their bytes again. Empty when nobody looked.
    pub body_items: &'a [LocatedItem],
    /// Who the caller is, once a plugin earlier in the chain (or an earlier stage) verified it.
    pub identity: Option<&'a Identity>,
    /// The WAF's parsed and decoded request, shared by the chain's WAF plugins. The chain
    /// provides it; a plugin run on its own builds its inspection itself.
    pub inspections: Option<&'a Inspections>,
}

/// A caller whose credentials a plugin verified (a JWT's client), for the plugins after it
/// (rate limits per client or team, bot exemptions) and for the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub client_id: Box<str>,
    /// The team the client was onboarded for, if any.
    pub team: Option<Box<str>>,
    /// What the caller may do (a token's scopes, narrowed to what its client was onboarded for).
    pub scopes: Box<[Box<str>]>,
    /// Headers that tell the upstream who called. The plugin that sets them also consumes
    /// them, so a copy sent by the client never travels.
    pub upstream_headers: Vec<(HeaderName, HeaderValue)>,
    /// The header whose whole value the plugin verified (a signed token's `Authorization`):
    /// its bytes are the issuer's, so inspectors need not search it for attacks.
    pub verified_header: Option<HeaderName>,
}

impl Identity {
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| &**s == scope)
    }
}
