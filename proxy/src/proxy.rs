//! The Pingora adapter: turns a session into a [`RequestView`], runs the listener's chain,
//! routes, and prepares the upstream request. One instance per listener.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use rampart_plugins::{forwarded, path, RequestView};

use crate::access_log;
use crate::metrics::status_class;
use crate::reload::Gateway;
use crate::snapshot::{Route, RuleSnapshot};

const NO_HEALTHY_UPSTREAM: ErrorType = ErrorType::Custom("NoHealthyUpstream");

/// Headers that describe one hop and must not be forwarded (RFC 9110 7.6.1). `Connection`
/// and `Upgrade` are left to Pingora, which needs them for WebSocket upgrades.
const HOP_BY_HOP: &[&str] = &[
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
];

pub struct RampartProxy {
    listener: Arc<str>,
    gateway: Arc<Gateway>,
}

impl RampartProxy {
    pub fn new(listener: &str, gateway: Arc<Gateway>) -> Self {
        RampartProxy {
            listener: listener.into(),
            gateway,
        }
    }
}

/// Per-request state, shared by the phases.
pub struct RequestCtx {
    start: Instant,
    snapshot: Option<Arc<RuleSnapshot>>,
    route: Option<Arc<Route>>,
    peer: IpAddr,
    client: IpAddr,
    /// `plugin` and rule id of the denial, or the proxy's own reason for refusing.
    refused: Option<(&'static str, Cow<'static, str>)>,
    upstream_error: Option<&'static str>,
}

impl RequestCtx {
    fn route_name(&self) -> &str {
        self.route.as_ref().map_or("none", |r| r.name.as_str())
    }

    fn upstream_name(&self) -> Option<&str> {
        self.route.as_ref().map(|r| r.upstream.name.as_str())
    }
}

/// A small JSON error: the status, a reason and the rule that decided. Nothing else, so
/// that a refusal teaches an attacker as little as possible.
pub fn error_body(status: u16, rule: &str) -> Bytes {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("error");
    Bytes::from(serde_json::json!({ "error": reason, "status": status, "rule": rule }).to_string())
}

async fn respond_json(session: &mut Session, status: u16, rule: &str) -> Result<()> {
    let body = error_body(status, rule);
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header("content-type", "application/json")?;
    resp.insert_header("content-length", body.len().to_string())?;
    resp.insert_header("cache-control", "no-store")?;
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
}

/// Ambiguous message framing is how requests are smuggled past a proxy: refuse it.
///
/// Pingora drops `Content-Length` from the parsed header when `Transfer-Encoding` is also
/// present (RFC 9112 lets a recipient do so), so `raw_header` is read to see what the client
/// really sent.
fn framing_problem(
    req: &RequestHeader,
    raw_header: impl FnOnce() -> Option<Bytes>,
) -> Option<&'static str> {
    let mut lengths = req.headers.get_all(CONTENT_LENGTH).iter();
    let first = lengths.next();
    if req.headers.contains_key(TRANSFER_ENCODING)
        && (first.is_some()
            || raw_header().is_some_and(|raw| has_header_line(&raw, b"content-length")))
    {
        return Some("framing.content_length_and_transfer_encoding");
    }
    if let Some(first) = first {
        let all_digits =
            |v: &http::HeaderValue| !v.is_empty() && v.as_bytes().iter().all(u8::is_ascii_digit);
        if !all_digits(first) {
            return Some("framing.bad_content_length");
        }
        if lengths.any(|v| v != first) {
            return Some("framing.conflicting_content_length");
        }
    }
    None
}

/// Whether a raw HTTP/1 header block has a line for header `name` (lowercase).
fn has_header_line(raw: &[u8], name: &[u8]) -> bool {
    raw.split(|&b| b == b'\n').skip(1).any(|line| {
        line.len() > name.len()
            && line[..name.len()].eq_ignore_ascii_case(name)
            && line[name.len()..]
                .iter()
                .find(|b| !matches!(b, b' ' | b'\t'))
                == Some(&b':')
    })
}

#[async_trait]
impl ProxyHttp for RampartProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            start: Instant::now(),
            snapshot: None,
            route: None,
            peer: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            client: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            refused: None,
            upstream_error: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let snapshot = self.gateway.snapshot();
        ctx.snapshot = Some(snapshot.clone());
        ctx.peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map_or(ctx.peer, |a| rampart_plugins::net::canonical(a.ip()));

        let Some(rules) = snapshot.listeners.get(&*self.listener) else {
            return refuse(session, ctx, 503, "proxy", "listener.not_configured").await;
        };
        let h1 = session.as_downstream().as_http1();
        let req = session.req_header();
        if let Some(problem) = framing_problem(req, || h1.map(|s| s.get_headers_raw_bytes())) {
            return refuse(session, ctx, 400, "proxy", problem).await;
        }
        let normalised = match path::normalize(req.uri.path()) {
            Ok(p) => p,
            Err(e) => {
                log::debug!("refusing path: {e}");
                return refuse(session, ctx, 400, "proxy", "path.malformed").await;
            }
        };
        let xff = req
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .map(|v| v.to_str().unwrap_or(""));
        ctx.client = forwarded::client_address(ctx.peer, xff, &snapshot.trusted_proxies);

        let Some(route) = rules.route(&normalised) else {
            return refuse(session, ctx, 404, "proxy", "route.none").await;
        };
        ctx.route = Some(route.clone());

        let view = RequestView {
            listener: &self.listener,
            route: &route.name,
            peer: ctx.peer,
            client: ctx.client,
            method: &req.method,
            path: &normalised,
            query: req.uri.query(),
            headers: &req.headers,
            body: None,
        };
        let metrics = &self.gateway.metrics;
        let denied = rules.chain.evaluate(&view, |hit| {
            metrics
                .plugin_verdicts
                .with_label_values(&[hit.plugin, &hit.deny.rule, hit.action.as_str()])
                .inc();
        });
        match denied {
            Some((plugin, deny)) => refuse(session, ctx, deny.status, plugin, deny.rule).await,
            None => Ok(false),
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let pool = &ctx
            .route
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route chosen"))?
            .upstream;
        match pool.select() {
            Some(peer) => Ok(Box::new(peer)),
            None => Err(Error::explain(
                NO_HEALTHY_UPSTREAM,
                format!("upstream {}: no healthy replica", pool.name),
            )),
        }
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(snapshot) = ctx.snapshot.as_ref() else {
            return Err(Error::explain(ErrorType::InternalError, "no snapshot"));
        };
        let Some(rules) = snapshot.listeners.get(&*self.listener) else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "listener vanished",
            ));
        };
        for name in rules.chain.consumed_headers() {
            upstream.remove_header(name);
        }
        for name in HOP_BY_HOP {
            upstream.remove_header(*name);
        }

        // A trusted proxy's chain is extended; anyone else's is replaced, so that an upstream
        // reading the header never sees what a client made up.
        let trusted = snapshot.trusted_proxies.contains(ctx.peer);
        let peer = ctx.peer.to_string();
        let xff = if trusted {
            let prior: Vec<&str> = upstream
                .headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            if prior.is_empty() {
                peer
            } else {
                format!("{}, {peer}", prior.join(", "))
            }
        } else {
            peer
        };
        upstream.insert_header("x-forwarded-for", xff)?;
        if !(trusted && upstream.headers.contains_key("x-forwarded-proto")) {
            upstream.insert_header(
                "x-forwarded-proto",
                if rules.tls { "https" } else { "http" },
            )?;
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let (code, kind) = match e.etype() {
            ErrorType::HTTPStatus(code) => (*code, "status"),
            ErrorType::ConnectTimedout => (504, "connect_timeout"),
            ErrorType::ReadTimedout | ErrorType::WriteTimedout => (504, "timeout"),
            ErrorType::ConnectRefused | ErrorType::ConnectNoRoute | ErrorType::ConnectError => {
                (502, "connect")
            }
            ErrorType::TLSHandshakeFailure
            | ErrorType::InvalidCert
            | ErrorType::TLSWantX509Lookup => (502, "tls"),
            t if *t == NO_HEALTHY_UPSTREAM => (502, "no_healthy_upstream"),
            _ => match e.esource() {
                ErrorSource::Upstream => (502, "upstream"),
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => {
                        (0, "downstream_gone")
                    }
                    _ => (400, "bad_request"),
                },
                ErrorSource::Internal | ErrorSource::Unset => (500, "internal"),
            },
        };
        if code >= 500 {
            let upstream = ctx.upstream_name().unwrap_or("none");
            self.gateway
                .metrics
                .upstream_errors
                .with_label_values(&[upstream, kind])
                .inc();
            ctx.upstream_error = Some(kind);
        }
        if code > 0 && session.response_written().is_none() {
            let rule = format!("upstream.{kind}");
            if let Err(we) = respond_json(session, code, &rule).await {
                log::debug!("could not send error response: {we}");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// Used by Pingora in its error log lines: method, path and listener only, since the
    /// query string may carry tokens.
    fn request_summary(&self, session: &Session, _ctx: &RequestCtx) -> String {
        let req = session.req_header();
        format!("{} {} on {}", req.method, req.uri.path(), self.listener)
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let route = ctx.route_name();
        let m = &self.gateway.metrics;
        m.requests
            .with_label_values(&[&self.listener, route, status_class(status)])
            .inc();
        let elapsed = ctx.start.elapsed();
        m.request_duration
            .with_label_values(&[&self.listener, route])
            .observe(elapsed.as_secs_f64());
        access_log::write(&access_log::Entry {
            listener: &self.listener,
            route,
            upstream: ctx.upstream_name(),
            method: session.req_header().method.as_str(),
            path: session.req_header().uri.path(),
            status,
            duration: elapsed,
            peer: ctx.peer,
            client: ctx.client,
            refused_by: ctx.refused.as_ref().map(|(p, r)| (*p, r.as_ref())),
            upstream_error: ctx.upstream_error,
        });
    }
}

async fn refuse(
    session: &mut Session,
    ctx: &mut RequestCtx,
    status: u16,
    by: &'static str,
    rule: impl Into<Cow<'static, str>>,
) -> Result<bool> {
    let rule = rule.into();
    respond_json(session, status, &rule).await?;
    ctx.refused = Some((by, rule));
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/v1/chat/completions", None).expect("req");
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).expect("header");
        }
        r
    }

    fn problem(headers: &[(&str, &str)]) -> Option<&'static str> {
        framing_problem(&req(headers), || None)
    }

    #[test]
    fn ambiguous_framing_is_detected() {
        assert_eq!(problem(&[("content-length", "5")]), None);
        assert_eq!(problem(&[("transfer-encoding", "chunked")]), None);
        assert!(problem(&[("content-length", "5"), ("transfer-encoding", "chunked")]).is_some());
        assert!(problem(&[("content-length", "5"), ("content-length", "6")]).is_some());
        assert_eq!(
            problem(&[("content-length", "5"), ("content-length", "5")]),
            None
        );
        assert!(problem(&[("content-length", "-1")]).is_some());
        assert!(problem(&[("content-length", "5, 6")]).is_some());
    }

    #[test]
    fn content_length_removed_by_the_parser_is_found_in_the_raw_header() {
        let parsed = req(&[("transfer-encoding", "chunked")]);
        let raw = Bytes::from_static(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length : 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        assert!(framing_problem(&parsed, || Some(raw.clone())).is_some());
        let clean = Bytes::from_static(
            b"POST / HTTP/1.1\r\nX-Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        assert_eq!(framing_problem(&parsed, || Some(clean.clone())), None);
    }

    #[test]
    fn error_body_is_small_json() {
        let b = error_body(403, "origin_verify.missing");
        let v: serde_json::Value = serde_json::from_slice(&b).expect("json");
        assert_eq!(v["error"], "Forbidden");
        assert_eq!(v["rule"], "origin_verify.missing");
    }
}
