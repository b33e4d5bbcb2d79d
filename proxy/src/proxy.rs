//! The Pingora adapter: turns a session into a [`RequestView`], runs the listener's chain,
//! routes, and prepares the upstream request. One instance per listener.
//!
//! A request's way through the phases (the connection around it: [`crate::connection`]):
//!
//! ```text
//!  request_filter ───── write timeout, body deadline (client_limits)
//!   │                   ambiguous framing ──────────────────────────────► 400
//!   │                   path normalisation ─────────────────────────────► 400
//!   │                   client address (X-Forwarded-For from trusted peers only)
//!   │                   route (longest prefix) ─────────────────────────► 404
//!   ├─ provider route ─ chain on the headers ► body read whole ► chain on the body (a
//!   │  (serve_llm)      window at a time) ► crate::llm calls the providers ► answer streams
//!   │                   back; any denial ────────────────────────────────► 403/429/413/408
//!   └─ pooled route ─── small body with a length: read now; otherwise held (held_body)
//!                       chain on the headers (and the small body) ───────► 403/429...
//!  upstream_peer ────── a healthy replica of the route's pool ───────────► 502
//!  connected_to_upstream  the socket kept, to cut a request refused midway
//!  upstream_request_filter  consumed secrets, client X-Rampart-*, hop-by-hop out;
//!                       verified caller, X-Forwarded-For/-Proto, X-Request-Id in
//!  request_body_filter  held parts judged a window at a time, each sent on once judged;
//!                       a denial cuts the upstream connection ─────────────► 403/413
//!  response_filter ─── an answer before the whole body: keep-alive if the rest can be
//!                       drained (unread_body)
//!  fail_to_proxy ────── one JSON answer for every error (client's: 400/408, upstream's:
//!                       502/504); response streams back untouched otherwise
//!  logging ──────────── one access-log line, metrics, closes counted
//! ```

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use rampart_plugins::waf::encoding::{ContentDecoder, DecodeError};
use rampart_plugins::waf::judged::LocatedItem;
use rampart_plugins::{forwarded, path, Deny, Identity, Judgement, RequestView, Stage};

use crate::access_log;
use crate::config::{BodyInspection, Oversize};
use crate::connection::{BodyDeadline, CloseReason, RequestLink};
use crate::header_names;
use crate::held_body::{HeldBody, Part};
use crate::llm::{self, Exchange, Outcome};
use crate::metrics::status_class;
use crate::reload::Gateway;
use crate::snapshot::{Route, RouteTarget, RuleSnapshot};
use crate::unread_body::{self, content_length};

const NO_HEALTHY_UPSTREAM: ErrorType = ErrorType::Custom("NoHealthyUpstream");
/// The request body fell behind its deadline ([`BodyDeadline`]).
const BODY_TIMEOUT: ErrorType = ErrorType::Custom("BodyTimeout");

/// Cuts the upstream connection of a request whose body is refused midway, before Pingora
/// can end the body it started: the upstream sees a request cut short (no last chunk, or
/// fewer bytes than its Content-Length), never a complete one.
fn abort_upstream(ctx: &mut RequestCtx) {
    if let Some(fd) = ctx.upstream_fd.take() {
        // SAFETY: the descriptor is the upstream socket Pingora handed to
        // `connected_to_upstream` for this request, still open: Pingora closes it only when
        // the request's session is dropped. shutdown() does not close or reuse it.
        unsafe {
            libc::shutdown(fd, libc::SHUT_RDWR);
        }
    }
}

/// Reads the next chunk of the request body within the body's deadline, and moves the
/// read timeout to what is left of it, so that a client that stops sending is cut off too.
async fn next_body_chunk(
    session: &mut Session,
    clock: &mut Option<BodyDeadline>,
) -> Result<Option<Bytes>> {
    let chunk = session.read_request_body().await.map_err(|mut e| {
        if e.etype() == &ErrorType::ReadTimedout {
            e.etype = BODY_TIMEOUT;
        }
        e
    })?;
    if let Some(clock) = clock.as_mut() {
        clock.received(chunk.as_ref().map_or(0, Bytes::len));
        check_body_clock(session, clock)?;
    }
    Ok(chunk)
}

/// Fails with [`BODY_TIMEOUT`] once the deadline passed; otherwise the next read may wait
/// only as long as is left.
fn check_body_clock(session: &mut Session, clock: &BodyDeadline) -> Result<()> {
    match clock.remaining() {
        Some(left) => {
            session.set_read_timeout(Some(left));
            Ok(())
        }
        None => Err(Error::explain(
            BODY_TIMEOUT,
            "request body behind its deadline",
        )),
    }
}

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
    /// Matches in count mode: (plugin, rule), at most [`COUNTED_KEPT`], for the access log.
    counted: Vec<(&'static str, String)>,
    /// A replica of the route's pool was asked for (the request went upstream).
    upstream_tried: bool,
    /// Headers the refusal carries (a 429's `Retry-After`).
    refused_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    upstream_error: Option<&'static str>,
    request_id: String,
    /// A body being held back from the upstream until the chain has judged it. Boxed: most
    /// requests hold none, and the context lives inline in Pingora's per-request future.
    held: Option<Box<HeldBody>>,
    /// The caller, once a plugin verified who it is.
    identity: Option<Arc<Identity>>,
    /// What a provider route did.
    llm: Option<Outcome>,
    /// The request body's deadline (the listener's `client_limits`).
    body_clock: Option<BodyDeadline>,
    /// The upstream connection's socket, to cut it when a body is refused midway.
    upstream_fd: Option<std::os::unix::io::RawFd>,
    /// The upstream switched protocols (a WebSocket): the connection is a tunnel now.
    upgraded: bool,
}

/// Pingora's retry buffer holds this much: a body up to this size with a known length is
/// read whole before the upstream is even chosen, and replayed to it from the buffer.
const RETRY_BUFFER_LIMIT: u64 = 64 * 1024;
/// A body read whole is judged in pieces of this size, the size of Pingora's reads.
const WHOLE_BODY_FEED: usize = 64 * 1024;
/// Matches in count mode kept per request for its access-log line (the metrics count all).
const COUNTED_KEPT: usize = 8;

/// A unique id per request: a per-process random prefix and a counter, hashed.
pub fn new_request_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static SEED: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = SEED.get_or_init(Default::default).build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    // Sixteen hex digits by hand: `format!` cost more than the hash.
    let id = h.finish();
    let mut hex = [0u8; 16];
    for (i, digit) in hex.iter_mut().enumerate() {
        *digit = b"0123456789abcdef"[(id >> (60 - 4 * i)) as usize & 0xf];
    }
    String::from_utf8(hex.to_vec()).unwrap_or_default()
}

impl RequestCtx {
    fn route_name(&self) -> &str {
        self.route.as_ref().map_or("none", |r| r.name.as_str())
    }

    /// The upstream pool, or for a provider route the provider that answered or was tried last.
    /// The upstream the request went to, for the access log: none when it was refused
    /// before one was tried (a pool route's replica chosen, a provider called).
    fn upstream_contacted(&self) -> Option<&str> {
        let route = self.route.as_ref()?;
        match route.pool() {
            Some(pool) => self.upstream_tried.then_some(pool.name.as_str()),
            None => self.llm.as_ref()?.provider.as_deref(),
        }
    }

    fn upstream_name(&self) -> Option<&str> {
        let route = self.route.as_ref()?;
        match route.pool() {
            Some(pool) => Some(pool.name.as_str()),
            None => self.llm.as_ref()?.provider.as_deref(),
        }
    }
}

/// A small JSON error: the status, a reason, the rule that decided and the request id (to
/// find the log line). Nothing else, so that a refusal teaches an attacker as little as possible.
pub fn error_body(status: u16, rule: &str, request_id: &str) -> Bytes {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("error");
    Bytes::from(
        serde_json::json!({ "error": reason, "status": status, "rule": rule, "request_id": request_id })
            .to_string(),
    )
}

async fn respond_json(
    session: &mut Session,
    status: u16,
    rule: &str,
    request_id: &str,
    extra: &[(http::HeaderName, http::HeaderValue)],
) -> Result<()> {
    let mut headers = extra.to_vec();
    headers.push((
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    ));
    write_json(
        session,
        status,
        error_body(status, rule, request_id),
        &headers,
    )
    .await
}

/// Writes a whole JSON answer: `extra` headers, then its type and length.
pub async fn write_json(
    session: &mut Session,
    status: u16,
    body: Bytes,
    extra: &[(http::HeaderName, http::HeaderValue)],
) -> Result<()> {
    write_whole(session, status, "application/json", body, extra).await
}

/// Writes a whole answer of rampart's own: `extra` headers (a name may repeat, as
/// `Set-Cookie` does), then its type and length.
async fn write_whole(
    session: &mut Session,
    status: u16,
    content_type: &'static str,
    body: Bytes,
    extra: &[(http::HeaderName, http::HeaderValue)],
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(2 + extra.len()))?;
    for (name, value) in extra {
        resp.append_header(name.clone(), value.clone())?;
    }
    resp.insert_header("content-type", content_type)?;
    resp.insert_header("content-length", body.len().to_string())?;
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
}

/// HTTP/2 names the host in `:authority` and sends no `Host`; the plugins (the WAF refuses a
/// request without one), the routes and an HTTP/1.1 upstream read `Host`. An HTTP/1.1 request
/// always has one, or no authority to take it from.
fn host_from_authority(req: &mut RequestHeader) -> Result<()> {
    if req.headers.contains_key(http::header::HOST) {
        return Ok(());
    }
    match req.uri.authority().map(|a| a.as_str().to_string()) {
        Some(authority) => req.insert_header(http::header::HOST, authority),
        None => Ok(()),
    }
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

impl RampartProxy {
    /// Runs the listener's chain over the request (and its body, when it is here),
    /// counting every match in the metrics.
    async fn judge(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        path: &str,
        body: Option<&[u8]>,
        body_items: &[LocatedItem],
        stage: Stage,
    ) -> Judgement {
        let (Some(snapshot), Some(route)) = (ctx.snapshot.as_ref(), ctx.route.as_ref()) else {
            return Judgement::default();
        };
        let Some(rules) = snapshot.listeners.get(&*self.listener) else {
            return Judgement::default();
        };
        if rules.chain.is_empty() {
            return Judgement::default();
        }
        let req = session.req_header();
        let view = RequestView {
            listener: &self.listener,
            route: &route.name,
            peer: ctx.peer,
            client: ctx.client,
            method: &req.method,
            path,
            query: req.uri.query(),
            headers: &req.headers,
            consumed: rules.chain.consumed_headers(),
            body,
            body_items,
            identity: ctx.identity.as_deref(),
            inspections: None,
        };
        let metrics = &self.gateway.metrics;
        let mut first_block: Option<(&'static str, String, String, String)> = None;
        let counted = &mut ctx.counted;
        let block_log = BlockLog {
            request_id: &ctx.request_id,
            listener: &self.listener,
            route: &route.name,
            client: ctx.client,
        };
        let consumed = rules.chain.consumed_headers();
        let judgement = rules
            .chain
            .evaluate(&view, stage, |hit| {
                let labels = [&*self.listener, hit.plugin, hit.rule, hit.action.as_str()];
                match hit.finding {
                    None => metrics.plugin_verdicts.with_label_values(&labels).inc(),
                    Some(_) => metrics.rule_matches.with_label_values(&labels).inc(),
                }
                let located = || {
                    hit.finding.map_or((String::new(), String::new()), |f| {
                        let excerpt = redact(f.location, f.excerpt, consumed);
                        (f.location.to_string(), excerpt)
                    })
                };
                match hit.action {
                    // A counted match is logged like a block, so that a rollout in count mode
                    // can be reviewed request by request.
                    rampart_plugins::Action::Count => {
                        if counted.len() < COUNTED_KEPT {
                            counted.push((hit.plugin, hit.rule.to_string()));
                        }
                        if sampled(&ctx.request_id, rules.block_log_sample) {
                            let (location, excerpt) = located();
                            block_log
                                .write(hit.plugin, hit.rule, "count", None, &location, &excerpt);
                        }
                    }
                    rampart_plugins::Action::Block => {
                        if first_block.is_none() && hit.finding.is_some() {
                            let (location, excerpt) = located();
                            first_block =
                                Some((hit.plugin, hit.rule.to_string(), location, excerpt));
                        }
                    }
                }
            })
            .await;
        if let Some((plugin, deny)) = &judgement.denied {
            if sampled(&ctx.request_id, rules.block_log_sample) {
                let (rule_plugin, rule, location, excerpt) = first_block.unwrap_or((
                    plugin,
                    deny.reason().to_string(),
                    String::new(),
                    String::new(),
                ));
                block_log.write(
                    rule_plugin,
                    &rule,
                    "block",
                    Some(&deny.rule),
                    &location,
                    &excerpt,
                );
            }
        }
        judgement
    }
}

/// The block log (stderr, target `rampart::blocked`) of one request: a line per refusal,
/// and per match in count mode.
struct BlockLog<'a> {
    request_id: &'a str,
    listener: &'a str,
    route: &'a str,
    client: IpAddr,
}

impl BlockLog<'_> {
    /// A line: the rule that matched, the action taken, the rule the client was told (for
    /// a refusal), where it matched and the redacted excerpt.
    fn write(
        &self,
        plugin: &str,
        rule: &str,
        action: &str,
        decided_by: Option<&str>,
        location: &str,
        matched: &str,
    ) {
        let mut line = serde_json::json!({
            "request_id": self.request_id, "listener": self.listener, "route": self.route,
            "client": self.client.to_string(), "plugin": plugin, "rule": rule,
            "action": action, "location": location, "matched": matched,
        });
        if let Some(rule) = decided_by {
            line["decided_by"] = rule.into();
        }
        log::warn!(target: "rampart::blocked", "{line}");
    }
}

/// Why a provider route's body could not be read whole.
enum BodyProblem {
    TooLarge,
}

/// Reads the whole request body, up to `limit` bytes, within the body's deadline.
async fn read_whole_body(
    session: &mut Session,
    limit: usize,
    clock: &mut Option<BodyDeadline>,
) -> Result<std::result::Result<Bytes, BodyProblem>> {
    if content_length(session.req_header()).is_some_and(|n| n > limit as u64) {
        return Ok(Err(BodyProblem::TooLarge));
    }
    let mut buf = BytesMut::new();
    while let Some(chunk) = next_body_chunk(session, clock).await? {
        if buf.len() + chunk.len() > limit {
            return Ok(Err(BodyProblem::TooLarge));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Ok(buf.freeze()))
}

impl RampartProxy {
    /// Judges a body read whole (a provider route's, or a small compressed one decoded past
    /// the window) as the route's `body_inspection` says: in one piece up to `limit_bytes`,
    /// in parts past it.
    async fn judge_whole_body(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        path: &str,
        body: &Bytes,
    ) -> std::result::Result<(), (&'static str, Deny)> {
        let Some(policy) = ctx.route.as_ref().map(|route| route.body) else {
            return Ok(());
        };
        if body.len() <= policy.limit_bytes {
            return self.judge_body_part(session, ctx, path, body, &[]).await;
        }
        let content_type = content_type(session.req_header());
        let mut held = HeldBody::new(path.to_string(), policy, content_type, None)
            .expecting(Some(body.len() as u64));
        // Fed as it would have come, so that each window is cut once it is full: handed
        // over in one piece, what follows each cut would be moved again at every cut.
        let mut from = 0;
        while from < body.len() {
            let to = body.len().min(from + WHOLE_BODY_FEED);
            let last = to == body.len();
            let parts = held
                .take(Some(body.slice(from..to)), last)
                .map_err(|problem| {
                    let (status, rule) = problem.refusal();
                    ("proxy", Deny::new(status, rule))
                })?;
            for part in parts {
                if let Part::Judge(segment) = part {
                    self.judge_body_part(session, ctx, path, segment.doc(), segment.located())
                        .await?;
                }
            }
            from = to;
        }
        Ok(())
    }

    async fn judge_body_part(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        path: &str,
        part: &[u8],
        located: &[LocatedItem],
    ) -> std::result::Result<(), (&'static str, Deny)> {
        let judgement = self
            .judge(session, ctx, path, Some(part), located, Stage::Body)
            .await;
        judgement.denied.map_or(Ok(()), Err)
    }

    /// A provider route: the chain judges the headers, then the whole body, and the request
    /// goes to the providers with rampart's own client (see [`crate::llm`]).
    async fn serve_llm(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        path: String,
    ) -> Result<bool> {
        let (Some(snapshot), Some(route)) = (ctx.snapshot.clone(), ctx.route.clone()) else {
            return refuse(session, ctx, 500, "proxy", "route.none").await;
        };
        let (Some(rules), Some(llm_rules), RouteTarget::Llm(target)) = (
            snapshot.listeners.get(&*self.listener),
            snapshot.llm.as_ref(),
            &route.target,
        ) else {
            return refuse(session, ctx, 503, "proxy", "llm.not_configured").await;
        };
        let inspects = rules.chain.inspects_body(ctx.peer);
        let stage = if inspects { Stage::Headers } else { Stage::All };
        let judgement = self.judge(session, ctx, &path, None, &[], stage).await;
        ctx.identity = judgement.identity;
        if let Some((plugin, deny)) = judgement.denied {
            return refuse_with(session, ctx, plugin, deny).await;
        }
        let max_body = llm_rules.settings.max_body_bytes;
        let body = match read_whole_body(session, max_body, &mut ctx.body_clock).await? {
            Ok(body) => body,
            Err(BodyProblem::TooLarge) => {
                return refuse(session, ctx, 413, "proxy", "body.too_large").await
            }
        };
        // A provider gets the body decoded (rampart reads and may rewrite it), without the
        // client's Content-Encoding (see `llm::not_forwarded`).
        let decoded = body_decoder(session.req_header(), &route.body)
            .and_then(|d| d.map(|mut d| d.decode_all(&body)).transpose());
        let body = match decoded {
            Ok(None) => body,
            Ok(Some(decoded)) if decoded.len() <= max_body => decoded.into(),
            Ok(Some(_)) => return refuse(session, ctx, 413, "proxy", "body.too_large").await,
            Err(e) => return refuse_decoding(session, ctx, &e).await,
        };
        if inspects {
            if let Err(refusal) = self.judge_whole_body(session, ctx, &path, &body).await {
                return refuse_with(session, ctx, refusal.0, refusal.1).await;
            }
        }
        let exchange = Exchange {
            rules: llm_rules,
            metrics: &self.gateway.metrics,
            target,
            rest: &path[route.prefix.trim_end_matches('/').len()..],
            prefix: &route.prefix,
            caller: rampart_plugins::token_budget::Caller {
                identity: ctx.identity.as_deref(),
                client: ctx.client,
            },
            consumed: rules.chain.consumed_headers(),
            start: ctx.start,
        };
        let mut outcome = Outcome::default();
        let served = llm::serve(session, exchange, body, &mut outcome).await;
        if let Some(reason) = outcome.refused.take() {
            ctx.refused = Some(("llm", reason));
        }
        if let (Some(kind), Some(provider)) = (outcome.upstream_error, &outcome.provider) {
            self.gateway
                .metrics
                .upstream_errors
                .with_label_values(&[provider, kind])
                .inc();
            ctx.upstream_error = Some(kind);
        }
        ctx.llm = Some(outcome);
        served.map(|()| true)
    }
}

/// The matched excerpt for the block log, or a placeholder when it came from a credential
/// (a secret header, or one a plugin consumes such as X-Origin-Verify).
fn redact(location: &str, excerpt: &str, consumed: &[http::HeaderName]) -> String {
    let header = location
        .strip_prefix("headers:")
        .or_else(|| location.strip_prefix("header_names:"));
    let secret = header.is_some_and(|h| {
        header_names::is_credential(h) || consumed.iter().any(|c| c.as_str() == h)
    }) || location.starts_with("cookies:");
    if secret {
        "<redacted>".to_string()
    } else {
        excerpt.to_string()
    }
}

/// Whether this request is in the sampled fraction (decided from its random id).
fn sampled(request_id: &str, fraction: f64) -> bool {
    if fraction >= 1.0 {
        return true;
    }
    let bucket = u64::from_str_radix(request_id.get(..8).unwrap_or("0"), 16).unwrap_or(0) as f64
        / f64::from(u32::MAX);
    bucket < fraction
}

/// The decoder of a body sent with a `Content-Encoding`, within the route's limits.
fn body_decoder(
    req: &RequestHeader,
    policy: &BodyInspection,
) -> std::result::Result<Option<ContentDecoder>, DecodeError> {
    let encoding = req.headers.get(http::header::CONTENT_ENCODING);
    ContentDecoder::for_header(encoding.map(|v| v.as_bytes()), policy.decode_limits())
}

/// Answers a body that cannot be decoded (415, 413 or 400, see [`DecodeError::refusal`]).
async fn refuse_decoding(
    session: &mut Session,
    ctx: &mut RequestCtx,
    e: &DecodeError,
) -> Result<bool> {
    let (status, rule) = e.refusal();
    refuse(session, ctx, status, "proxy", rule).await
}

/// The declared body type, empty when there is none.
fn content_type(req: &RequestHeader) -> &[u8] {
    req.headers
        .get(http::header::CONTENT_TYPE)
        .map_or(&b""[..], |v| v.as_bytes())
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
            counted: Vec::new(),
            upstream_tried: false,
            refused_headers: Vec::new(),
            upstream_error: None,
            request_id: new_request_id(),
            body_clock: None,
            upstream_fd: None,
            held: None,
            identity: None,
            llm: None,
            upgraded: false,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        host_from_authority(session.req_header_mut())?;
        let snapshot = self.gateway.snapshot();
        ctx.snapshot = Some(snapshot.clone());
        ctx.peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map_or(ctx.peer, |a| rampart_plugins::net::canonical(a.ip()));

        let Some(rules) = snapshot.listeners.get(&*self.listener) else {
            return refuse(session, ctx, 503, "proxy", "listener.not_configured").await;
        };
        let limits = &rules.client;
        session.set_write_timeout(Some(Duration::from_millis(limits.write_timeout_ms)));
        let clock = BodyDeadline::new(limits);
        check_body_clock(session, &clock)?;
        ctx.body_clock = Some(clock);
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
        let normalised = normalised.into_owned();
        if let RouteTarget::Llm(_) = route.target {
            // Boxed, to keep it out of every request's future (`phase_future_sizes`).
            return Box::pin(self.serve_llm(session, ctx, normalised)).await;
        }

        // Bodies that plugins inspect never reach an upstream unjudged: a small body with a
        // known length is read now, anything else is held in the body phase.
        let mut body = None;
        if rules.chain.inspects_body(ctx.peer) {
            let length = content_length(req);
            let chunked = req.headers.contains_key(TRANSFER_ENCODING);
            let policy = route.body;
            let limit = policy.limit_bytes as u64;
            // A compressed body is judged decoded; the upstream gets it as it was sent.
            let mut decoder = match body_decoder(req, &policy) {
                Ok(decoder) => decoder,
                Err(e) => return refuse_decoding(session, ctx, &e).await,
            };
            match length {
                Some(n) if !chunked && n > 0 && n <= RETRY_BUFFER_LIMIT.min(limit) => {
                    session.enable_retry_buffering();
                    let mut buf = BytesMut::with_capacity(n as usize);
                    while let Some(chunk) = next_body_chunk(session, &mut ctx.body_clock).await? {
                        buf.extend_from_slice(&chunk);
                    }
                    let sent = buf.freeze();
                    body = Some(match decoder.as_mut().map(|d| d.decode_all(&sent)) {
                        None => sent,
                        Some(Ok(decoded)) => decoded.into(),
                        Some(Err(e)) => return refuse_decoding(session, ctx, &e).await,
                    });
                }
                Some(n) if !chunked && n > limit && policy.oversize == Oversize::Refuse => {
                    return refuse(session, ctx, 413, "proxy", "body.too_large").await;
                }
                Some(0) | None if !chunked => {}
                _ => {
                    let content_type = content_type(req);
                    let held = HeldBody::new(normalised.clone(), policy, content_type, decoder);
                    ctx.held = Some(Box::new(held.expecting(length.filter(|_| !chunked))));
                }
            }
        }
        // A small compressed body can decode past the window: it is judged as the route's
        // `body_inspection` says of its decoded size, like a held one (in parts, a prefix, or
        // refused), after the headers.
        let decoded_past_window = body.take_if(|b| b.len() > route.body.limit_bytes);
        let stage = if ctx.held.is_some() || decoded_past_window.is_some() {
            Stage::Headers
        } else {
            Stage::All
        };
        let judgement = self
            .judge(session, ctx, &normalised, body.as_deref(), &[], stage)
            .await;
        ctx.identity = judgement.identity;
        if let Some((plugin, deny)) = judgement.denied {
            return refuse_with(session, ctx, plugin, deny).await;
        }
        if let Some(decoded) = decoded_past_window {
            // Boxed, to keep it out of every request's future (`phase_future_sizes`).
            let judged = Box::pin(self.judge_whole_body(session, ctx, &normalised, &decoded)).await;
            if let Err((plugin, deny)) = judged {
                return refuse_with(session, ctx, plugin, deny).await;
            }
        }
        Ok(false)
    }

    /// The body phase: chunks are held back until the whole body (or the inspection limit)
    /// is here and judged; then they go on together. A refusal aborts the upstream request.
    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(clock) = ctx.body_clock.as_mut() {
            clock.received(body.as_ref().map_or(0, Bytes::len));
            if !end_of_stream {
                check_body_clock(session, clock)?;
            }
        }
        let Some(mut held) = ctx.held.take() else {
            return Ok(());
        };
        let parts = match held.take(body.take(), end_of_stream) {
            Ok(parts) => parts,
            Err(problem) => {
                abort_upstream(ctx);
                let (status, rule) = problem.refusal();
                ctx.refused = Some(("proxy", Cow::Borrowed(rule)));
                return Err(Error::explain(
                    ErrorType::HTTPStatus(status),
                    "request body cannot be inspected",
                ));
            }
        };
        let mut judged = Vec::with_capacity(parts.len());
        for part in parts {
            let segment = match part {
                Part::Pass(bytes) => {
                    judged.push(bytes);
                    continue;
                }
                Part::Judge(segment) => segment,
            };
            let judgement = self
                .judge(
                    session,
                    ctx,
                    &held.path,
                    Some(segment.doc()),
                    segment.located(),
                    Stage::Body,
                )
                .await;
            if let Some((plugin, deny)) = judgement.denied {
                // Bytes before this part may have gone on: the upstream request is cut,
                // never ended as a complete (shorter) one.
                abort_upstream(ctx);
                let status = deny.status;
                ctx.refused = Some((plugin, deny.detail.map_or(deny.rule, Cow::Borrowed)));
                ctx.refused_headers = deny.headers;
                return Err(Error::explain(
                    ErrorType::HTTPStatus(status),
                    "request body refused",
                ));
            }
            judged.push(segment.into_release());
        }
        ctx.held = Some(held);
        // An empty chunk, not None: None would tell the upstream the body has ended.
        *body = Some(match judged.len() {
            0 => Bytes::new(),
            1 => judged.swap_remove(0),
            _ => judged.concat().into(),
        });
        Ok(())
    }

    /// The upstream's socket is kept to cut the request off if its body is refused midway.
    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora_core::protocols::Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.upstream_fd = Some(fd);
        Ok(())
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        ctx.upstream_tried = true;
        let pool =
            ctx.route.as_ref().and_then(|r| r.pool()).ok_or_else(|| {
                Error::explain(ErrorType::InternalError, "no upstream pool chosen")
            })?;
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
        // What the chain consumed (shared secrets), a client's own X-Rampart-* (only
        // rampart speaks for the caller), hop-by-hop headers and Proxy-Authorization: found
        // in one pass over the names the request has, since most requests have none of them
        // and each removal by name is a lookup in two maps.
        let consumed = rules.chain.consumed_headers();
        let doomed: Vec<http::HeaderName> = upstream
            .headers
            .keys()
            .filter(|name| {
                consumed.contains(name)
                    || header_names::is_rampart_own(name.as_str())
                    || header_names::HOP_BY_HOP.contains(&name.as_str())
                    || *name == http::header::PROXY_AUTHORIZATION
            })
            .cloned()
            .collect();
        for name in &doomed {
            upstream.remove_header(name);
        }
        if let Some(who) = &ctx.identity {
            for (name, value) in &who.upstream_headers {
                upstream.insert_header(name.clone(), value.clone())?;
            }
        }

        // A trusted proxy's chain is extended; anyone else's is replaced, so that an upstream
        // reading the header never sees what a client made up.
        let trusted = snapshot.trusted_proxies.contains(ctx.peer);
        let mut xff = Vec::with_capacity(16);
        if trusted {
            for prior in upstream.headers.get_all("x-forwarded-for") {
                if let Ok(prior) = prior.to_str() {
                    xff.extend_from_slice(prior.as_bytes());
                    xff.extend_from_slice(b", ");
                }
            }
        }
        rampart_plugins::net::push_ip(&mut xff, ctx.peer);
        upstream.insert_header("x-forwarded-for", xff)?;
        upstream.insert_header("x-request-id", ctx.request_id.as_str())?;
        if !(trusted && upstream.headers.contains_key("x-forwarded-proto")) {
            upstream.insert_header(
                "x-forwarded-proto",
                if rules.tls { "https" } else { "http" },
            )?;
        }
        Ok(())
    }

    /// The upstream's answer, about to go to the client: an answer that comes before the
    /// request body has all arrived keeps the connection when the rest can be drained; an
    /// upgrade (a WebSocket) turns the connection into a tunnel.
    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if upstream_response.status == http::StatusCode::SWITCHING_PROTOCOLS {
            // What follows is a conversation, not a request body: the body deadline ends
            // here. The read timeout becomes the idle timeout; Pingora polls the client
            // afresh whenever the upstream sends, so it fires only when nothing flows
            // either way.
            ctx.body_clock = None;
            ctx.upgraded = true;
            let idle = ctx
                .snapshot
                .as_ref()
                .and_then(|s| s.listeners.get(&*self.listener))
                .map(|rules| Duration::from_millis(rules.client.idle_timeout_ms));
            session.set_read_timeout(idle);
            return Ok(());
        }
        unread_body::keep_alive_if_drainable(session);
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let client = e.esource() == &ErrorSource::Downstream;
        let (code, kind) = match e.etype() {
            ErrorType::HTTPStatus(code) => (*code, "status"),
            t if *t == BODY_TIMEOUT => (408, "body_timeout"),
            // The client's side: it was slow, went away, or sent what cannot be read.
            ErrorType::ReadTimedout if client => (408, "body_timeout"),
            ErrorType::WriteTimedout
            | ErrorType::WriteError
            | ErrorType::ReadError
            | ErrorType::ConnectionClosed
                if client =>
            {
                (0, "client_gone")
            }
            _ if client => (400, "bad_request"),
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
                _ => (500, "internal"),
            },
        };
        if (client || *e.etype() == BODY_TIMEOUT) && code > 0 && ctx.refused.is_none() {
            ctx.refused = Some(("proxy", Cow::Owned(format!("client.{kind}"))));
        }
        if code >= 500 && ctx.refused.is_none() && ctx.upstream_error.is_none() {
            let upstream = ctx.upstream_name().unwrap_or("none");
            self.gateway
                .metrics
                .upstream_errors
                .with_label_values(&[upstream, kind])
                .inc();
            ctx.upstream_error = Some(kind);
        }
        if code > 0 && session.response_written().is_none() {
            let rule = match &ctx.refused {
                Some((_, rule)) => rule.to_string(),
                None => format!("upstream.{kind}"),
            };
            let extra = std::mem::take(&mut ctx.refused_headers);
            if let Err(we) = respond_json(session, code, &rule, &ctx.request_id, &extra).await {
                log::debug!("could not send error response: {we}");
            }
            if ctx.refused.is_some() {
                unread_body::drain_after_refusal(session).await;
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// The connection's loop ([`crate::connection`]) hands each request a link to mark, so
    /// that it can tell a head Pingora refused before this proxy saw it.
    fn on_connection_reuse(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
        link: Box<dyn std::any::Any + Send + Sync>,
    ) {
        RequestLink::mark_reached(link);
    }

    /// Refusals, and clients that go away or fall behind, are this proxy's ordinary work:
    /// the access log and the metrics record them, so they are not Pingora ERROR lines.
    fn suppress_error_log(&self, _session: &Session, ctx: &RequestCtx, error: &Error) -> bool {
        let expected = ctx.refused.is_some() || error.esource() == &ErrorSource::Downstream;
        if expected {
            log::debug!("request {} ended: {error}", ctx.request_id);
        }
        expected
    }

    /// Used by Pingora in its error log lines: method, path and listener only, since the
    /// query string may carry tokens.
    fn request_summary(&self, session: &Session, _ctx: &RequestCtx) -> String {
        let req = session.req_header();
        format!("{} {} on {}", req.method, req.uri.path(), self.listener)
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let route = ctx.route_name();
        let m = &self.gateway.metrics;
        let closed_for = match e.map(|e| (e.etype(), e.esource())) {
            Some((ErrorType::ReadTimedout, ErrorSource::Downstream)) if ctx.upgraded => {
                Some(CloseReason::IdleTimeout)
            }
            Some((t, _)) if *t == BODY_TIMEOUT => Some(CloseReason::BodyTimeout),
            Some((ErrorType::ReadTimedout, ErrorSource::Downstream)) => {
                Some(CloseReason::BodyTimeout)
            }
            Some((ErrorType::WriteTimedout, ErrorSource::Downstream)) => {
                Some(CloseReason::WriteTimeout)
            }
            _ => None,
        };
        if let Some(reason) = closed_for {
            m.client_closes
                .with_label_values(&[&self.listener, reason.as_str()])
                .inc();
        }
        m.requests
            .with_label_values(&[&self.listener, route, status_class(status)])
            .inc();
        let elapsed = ctx.start.elapsed();
        let usage = ctx.llm.as_ref().and_then(|o| o.usage);
        m.request_duration
            .with_label_values(&[&self.listener, route])
            .observe(elapsed.as_secs_f64());
        access_log::write(&access_log::Entry {
            listener: &self.listener,
            route,
            upstream: ctx.upstream_contacted(),
            method: session.req_header().method.as_str(),
            path: session.req_header().uri.path(),
            status,
            duration: elapsed,
            peer: ctx.peer,
            client: ctx.client,
            client_id: ctx.identity.as_deref().map(|who| &*who.client_id),
            team: ctx.identity.as_deref().and_then(|who| who.team.as_deref()),
            refused_by: ctx.refused.as_ref().map(|(p, r)| (*p, r.as_ref())),
            counted_by: &ctx.counted,
            request_id: &ctx.request_id,
            upstream_error: ctx.upstream_error,
            prompt_tokens: usage.map(|u| u.prompt_tokens),
            completion_tokens: usage.map(|u| u.completion_tokens),
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
    refuse_with(session, ctx, by, Deny::new(status, rule)).await
}

async fn refuse_with(
    session: &mut Session,
    ctx: &mut RequestCtx,
    by: &'static str,
    deny: Deny,
) -> Result<bool> {
    let Deny {
        status,
        rule,
        headers,
        detail,
        page,
    } = deny;
    match page {
        Some(page) => {
            let mut headers = headers;
            headers.push((
                http::header::CACHE_CONTROL,
                http::HeaderValue::from_static("no-store"),
            ));
            let body = Bytes::from(page.body);
            write_whole(session, status, page.content_type, body, &headers).await?
        }
        None => respond_json(session, status, &rule, &ctx.request_id, &headers).await?,
    }
    unread_body::drain_after_refusal(session).await;
    // Logs and metrics get the precise reason; the client was told only `rule`.
    ctx.refused = Some((by, detail.map_or(rule, Cow::Borrowed)));
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
    fn credentials_are_never_logged() {
        let consumed = [http::HeaderName::from_static("x-origin-verify")];
        assert_eq!(
            redact("headers:authorization", "Bearer sk-1", &consumed),
            "<redacted>"
        );
        assert_eq!(
            redact("headers:x-origin-verify", "s3cret", &consumed),
            "<redacted>"
        );
        assert_eq!(redact("cookies:session", "abc", &consumed), "<redacted>");
        assert_eq!(
            redact("headers:x-goog-api-key", "AIza-1", &consumed),
            "<redacted>"
        );
        assert_eq!(redact("args:user", "${jndi:x}", &consumed), "${jndi:x}");
    }

    #[test]
    fn sampling_follows_the_fraction() {
        assert!(sampled("ffffffffffffffff", 1.0));
        assert!(!sampled("ffffffff00000000", 0.5));
        assert!(sampled("0000000100000000", 0.5));
        assert!(!sampled("0000000100000000", 0.0));
    }

    #[test]
    fn error_body_is_small_json() {
        let b = error_body(403, "origin_verify.missing", "0123456789abcdef");
        let v: serde_json::Value = serde_json::from_slice(&b).expect("json");
        assert_eq!(v["error"], "Forbidden");
        assert_eq!(v["rule"], "origin_verify.missing");
        assert_eq!(v["request_id"], "0123456789abcdef");
    }
}

/// How large a phase's future may grow. Pingora's phases are `async_trait` methods: each
/// call boxes its future, and the move into the box copies the future's whole size (every
/// state's, not only the first) on every request. A rare path's state kept inline would be
/// paid by every GET, so the large ones (the provider path, a decoded body judged whole) are
/// boxed where they are awaited.
#[cfg(test)]
mod phase_future_sizes {
    use super::*;
    use pingora_core::apps::HttpServerApp;
    use pingora_core::protocols::l4::stream::Stream;
    use std::mem::size_of_val;

    const PHASE_FUTURE_BUDGET: usize = 4 * 1024;
    /// Pingora's own request future is about 13 KiB with an empty context (`bare_pingora`):
    /// rampart's context adds to it, inline.
    const CONTEXT_BUDGET: usize = 512;

    #[test]
    fn a_request_builds_small_phase_futures() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let (_rules, gateway) = Gateway::for_test(crate::reload::ONE_ROUTE);
            let proxy = RampartProxy::new("web", gateway.clone());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let connect = || tokio::net::TcpStream::connect(listener.local_addr().expect("addr"));
            let client: Stream = connect().await.expect("connect").into();
            let mut session = Session::new_h1(Box::new(client));
            let mut ctx = proxy.new_ctx();

            assert!(
                size_of::<RequestCtx>() <= CONTEXT_BUDGET,
                "RequestCtx is {} bytes",
                size_of::<RequestCtx>()
            );
            let request = size_of_val(&*proxy.request_filter(&mut session, &mut ctx));
            assert!(
                request <= PHASE_FUTURE_BUDGET,
                "request_filter: {request} bytes"
            );
            let mut chunk = None;
            let body =
                size_of_val(&*proxy.request_body_filter(&mut session, &mut chunk, true, &mut ctx));
            assert!(
                body <= PHASE_FUTURE_BUDGET,
                "request_body_filter: {body} bytes"
            );
            // What the boxing keeps out of every request: the provider path alone is larger
            // than the budget. (When it is not, the boxing can go.)
            let provider = size_of_val(&proxy.serve_llm(&mut session, &mut ctx, String::new()));
            assert!(
                provider > PHASE_FUTURE_BUDGET,
                "serve_llm: {provider} bytes"
            );

            // Pingora's whole request future, rampart's context inside it.
            let conf = Arc::new(pingora_core::server::configuration::ServerConf::default());
            let http = Arc::new(pingora_proxy::http_proxy(&conf, proxy));
            let downstream: Stream = connect().await.expect("connect").into();
            let downstream =
                pingora_core::protocols::http::ServerSession::new_http1(Box::new(downstream));
            let (_shutdown, watch) = tokio::sync::watch::channel(false);
            let whole = size_of_val(&*http.process_new_http(downstream, &watch));
            assert!(
                whole <= 16 * 1024,
                "Pingora's request future: {whole} bytes"
            );
        });
    }
}
