//! Client connections: the deadlines and caps an internet-facing listener needs and that
//! Pingora 0.9's HTTP/1 server leaves out (its issue #447: a request head that trickles in
//! resets the read timer, and a keep-alive connection waits forever for its next request).
//!
//! Each listener's Pingora proxy runs behind a [`GuardedHttp`], which owns the connection
//! between requests, in a task of its own (Pingora's task for the accepted connection ends
//! at once: it holds the TLS handshake's state, which a waiting connection does not need):
//!
//! ```text
//!  accept ─► connection caps ─────────── listener / peer address full ─► 503, close
//!    │
//!    └─► loop ─► wait for a request head ─ idle past idle_timeout ──────► close
//!          ▲      (read by this module)    head past header_timeout ───► 408, close
//!          │                               head or a line too large ───► 431, close
//!          │
//!          │     Pingora parses the head ─ refused by Pingora itself ──► its 400/405,
//!          │     (handed over as bytes       logged and counted here
//!          │      already read)
//!          │     RampartProxy's phases ──── body deadlines, write timeout: crate::proxy
//!          └──── keep-alive
//! ```
//!
//! Every close for a limit is counted in `rampart_client_closes_total{listener, reason}`;
//! every answer sent from here gets an access-log line like any other request.

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::BytesMut;
use pingora_core::apps::{HttpServerApp, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::{Stream, ALPN};
use pingora_core::server::ShutdownWatch;
use pingora_proxy::HttpProxy;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};

use crate::access_log;
use crate::config::ClientLimits;
use crate::metrics::status_class;
use crate::proxy::{error_body, new_request_id, RampartProxy};
use crate::reload::Gateway;

/// Why a client connection was closed or refused by a limit. The label values of
/// `rampart_client_closes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// A keep-alive connection sent no new request within `idle_timeout_ms`.
    IdleTimeout,
    /// A request head was not complete within `header_timeout_ms`.
    HeaderTimeout,
    /// A request head, or one of its lines, was larger than allowed.
    HeaderTooLarge,
    /// A request body fell behind its deadline (`body_timeout_ms`, `min_body_rate`).
    BodyTimeout,
    /// A client stopped reading its answer for `write_timeout_ms`.
    WriteTimeout,
    /// The listener held `max_connections`.
    TooManyConnections,
    /// The peer address held `max_connections_per_address`.
    TooManyFromAddress,
    /// Pingora could not parse the request head (or refused its method) and answered itself.
    MalformedRequest,
}

impl CloseReason {
    pub const ALL: [CloseReason; 8] = [
        CloseReason::IdleTimeout,
        CloseReason::HeaderTimeout,
        CloseReason::HeaderTooLarge,
        CloseReason::BodyTimeout,
        CloseReason::WriteTimeout,
        CloseReason::TooManyConnections,
        CloseReason::TooManyFromAddress,
        CloseReason::MalformedRequest,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::HeaderTimeout => "header_timeout",
            CloseReason::HeaderTooLarge => "header_too_large",
            CloseReason::BodyTimeout => "body_timeout",
            CloseReason::WriteTimeout => "write_timeout",
            CloseReason::TooManyConnections => "too_many_connections",
            CloseReason::TooManyFromAddress => "too_many_from_address",
            CloseReason::MalformedRequest => "malformed_request",
        }
    }

    /// The answer a client still gets, and the rule id it names.
    fn answer(self) -> Option<(u16, &'static str)> {
        match self {
            CloseReason::HeaderTimeout => Some((408, "client.header_timeout")),
            CloseReason::HeaderTooLarge => Some((431, "client.header_too_large")),
            CloseReason::TooManyConnections => Some((503, "client.too_many_connections")),
            CloseReason::TooManyFromAddress => Some((503, "client.too_many_from_address")),
            _ => None,
        }
    }
}

/// Open connections of one listener, in all and per peer address.
#[derive(Default)]
struct OpenConnections {
    total: AtomicUsize,
    per_address: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection; gives its place back when dropped.
struct Admitted<'a> {
    open: &'a OpenConnections,
    address: Option<IpAddr>,
}

impl OpenConnections {
    fn admit(
        &self,
        address: Option<IpAddr>,
        limits: &ClientLimits,
        capped_address: bool,
    ) -> Result<Admitted<'_>, CloseReason> {
        if self.total.fetch_add(1, Ordering::AcqRel) >= limits.max_connections {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(CloseReason::TooManyConnections);
        }
        let mut admitted = Admitted {
            open: self,
            address: None,
        };
        if let (Some(ip), true) = (address, capped_address) {
            let mut map = self.per_address.lock().unwrap_or_else(|p| p.into_inner());
            let count = map.entry(ip).or_insert(0);
            if *count >= limits.max_connections_per_address {
                return Err(CloseReason::TooManyFromAddress);
            }
            *count += 1;
            admitted.address = Some(ip);
        }
        Ok(admitted)
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.open.total.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.address {
            let mut map = self
                .open
                .per_address
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(count) = map.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    map.remove(&ip);
                }
            }
        }
    }
}

/// Connections open on every listener of the process, for the drain at shutdown.
static OPEN_CLIENT_CONNECTIONS: AtomicUsize = AtomicUsize::new(0);

/// Client connections open on all listeners.
pub fn open_client_connections() -> usize {
    OPEN_CLIENT_CONNECTIONS.load(Ordering::Acquire)
}

struct ProcessWide;

impl ProcessWide {
    fn enter() -> Self {
        OPEN_CLIENT_CONNECTIONS.fetch_add(1, Ordering::AcqRel);
        ProcessWide
    }
}

impl Drop for ProcessWide {
    fn drop(&mut self) {
        OPEN_CLIENT_CONNECTIONS.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Handed to each request's context through Pingora's connection user context: the
/// request's phases mark it, so that a head Pingora refused before any phase ran is seen.
#[derive(Default)]
pub struct RequestLink {
    reached_phases: AtomicBool,
}

impl RequestLink {
    /// Called from the first phase Pingora runs for the request.
    pub fn mark_reached(prev: Box<dyn Any + Send + Sync>) {
        if let Ok(link) = prev.downcast::<Arc<RequestLink>>() {
            link.reached_phases.store(true, Ordering::Release);
        }
    }
}

/// A listener's Pingora proxy behind the connection limits.
pub struct GuardedHttp {
    listener: Arc<str>,
    gateway: Arc<Gateway>,
    proxy: Arc<HttpProxy<RampartProxy>>,
    open: OpenConnections,
}

impl GuardedHttp {
    pub fn new(listener: &str, gateway: Arc<Gateway>, proxy: HttpProxy<RampartProxy>) -> Self {
        GuardedHttp {
            listener: listener.into(),
            gateway,
            proxy: Arc::new(proxy),
            open: OpenConnections::default(),
        }
    }

    fn count(&self, reason: CloseReason) {
        self.gateway
            .metrics
            .client_closes
            .with_label_values(&[&self.listener, reason.as_str()])
            .inc();
    }

    /// Counts a close and, where the client may still read, answers it first.
    async fn close(
        &self,
        stream: &mut Stream,
        reason: CloseReason,
        peer: Option<IpAddr>,
        head: &[u8],
    ) {
        self.count(reason);
        let started = Instant::now();
        let Some((status, rule)) = reason.answer() else {
            return;
        };
        let request_id = new_request_id();
        let body = error_body(status, rule, &request_id);
        let reason_phrase = http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        let mut answer = format!(
            "HTTP/1.1 {status} {reason_phrase}\r\ncontent-type: application/json\r\ncontent-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        answer.extend_from_slice(&body);
        // A client that does not read is not waited for.
        let write = async {
            stream.write_all(&answer).await?;
            stream.flush().await
        };
        let _ = tokio::time::timeout(ANSWER_TIME, write).await;
        self.log_refusal(status, rule, peer, head, &request_id, started);
    }

    fn log_refusal(
        &self,
        status: u16,
        rule: &str,
        peer: Option<IpAddr>,
        head: &[u8],
        request_id: &str,
        started: Instant,
    ) {
        let peer = peer.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        let (method, path) = request_line(head);
        self.gateway
            .metrics
            .requests
            .with_label_values(&[&self.listener, "none", status_class(status)])
            .inc();
        access_log::write(&access_log::Entry {
            listener: &self.listener,
            route: "none",
            upstream: None,
            method: &method,
            path: &path,
            status,
            duration: started.elapsed(),
            peer,
            client: peer,
            client_id: None,
            team: None,
            refused_by: Some(("proxy", rule)),
            counted_by: &[],
            request_id,
            upstream_error: None,
            prompt_tokens: None,
            completion_tokens: None,
        });
    }
}

/// A request body's deadline: `body_timeout_ms` after the head, extended by a second for
/// every `min_body_rate` bytes received. A client trickling a byte a second is cut off
/// after `body_timeout_ms`; one sending at `min_body_rate` or faster never is.
#[derive(Debug, Clone, Copy)]
pub struct BodyDeadline {
    start: Instant,
    base: Duration,
    min_rate: u64,
    received: u64,
}

impl BodyDeadline {
    pub fn new(limits: &ClientLimits) -> Self {
        BodyDeadline {
            start: Instant::now(),
            base: Duration::from_millis(limits.body_timeout_ms),
            min_rate: limits.min_body_rate,
            received: 0,
        }
    }

    pub fn received(&mut self, bytes: usize) {
        self.received = self.received.saturating_add(bytes as u64);
    }

    fn deadline(&self) -> Instant {
        let earned = match self.min_rate {
            0 => Duration::ZERO,
            rate => Duration::from_secs_f64(self.received as f64 / rate as f64),
        };
        self.start + self.base + earned
    }

    /// Time left before the deadline, or `None` when it has passed.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline()
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    }
}

/// How long a refused client gets to take its answer.
const ANSWER_TIME: Duration = Duration::from_secs(1);

/// The request line of a head (after the empty lines RFC 9112 lets precede it), at most
/// 512 bytes of it.
fn first_line(head: &[u8]) -> &[u8] {
    let start = head
        .iter()
        .position(|b| !matches!(b, b'\r' | b'\n'))
        .unwrap_or(head.len());
    let line = &head[start..];
    &line[..memchr::memchr(b'\n', line).unwrap_or(line.len()).min(512)]
}

/// A request head's method and path (without the query), for the log line of a request
/// refused before Pingora parsed it: printable ASCII only, and at most 256 bytes.
fn request_line(head: &[u8]) -> (String, String) {
    let mut parts = first_line(head)
        .split(|&b| b == b' ')
        .filter(|p| !p.is_empty());
    let clean = |bytes: &[u8], max: usize| -> String {
        bytes
            .iter()
            .take(max)
            .map(|&b| if b.is_ascii_graphic() { b as char } else { '?' })
            .collect()
    };
    let method = parts.next().map_or_else(String::new, |m| clean(m, 16));
    let target = parts.next().unwrap_or_default();
    let path = &target[..target
        .iter()
        .position(|&b| b == b'?')
        .unwrap_or(target.len())];
    (method, clean(path, 256))
}

/// How waiting for a request head ended, when it did not end with a head.
#[derive(Debug, PartialEq, Eq)]
enum NoHead {
    /// The client closed (before or in the middle of a head), or the server is shutting
    /// down between requests: nothing to answer.
    Closed,
    Limit(CloseReason),
}

/// Where a request head ends, read as it arrives: the blank line after the headers, found
/// without re-reading what was scanned, and the longest line seen so far.
#[derive(Debug, Default)]
struct HeadScan {
    /// Empty lines before the request line, which RFC 9112 (2.2) lets a server ignore.
    leading: usize,
    /// Bytes already scanned.
    scanned: usize,
    /// Where the current line starts.
    line_start: usize,
}

impl HeadScan {
    /// Scans what arrived since the last call. `Ok(Some(n))`: the head is the first `n`
    /// bytes. Line endings may be CRLF or a bare LF, as Pingora's parser accepts both.
    fn feed(&mut self, buf: &[u8], limits: &ClientLimits) -> Result<Option<usize>, CloseReason> {
        if self.scanned == self.leading {
            while self.leading < buf.len() && matches!(buf[self.leading], b'\r' | b'\n') {
                self.leading += 1;
            }
            self.scanned = self.leading;
            self.line_start = self.leading;
        }
        while let Some(offset) = memchr::memchr(b'\n', &buf[self.scanned..]) {
            let newline = self.scanned + offset;
            let line = &buf[self.line_start..newline];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.len() > limits.max_header_line_bytes {
                return Err(CloseReason::HeaderTooLarge);
            }
            self.scanned = newline + 1;
            self.line_start = newline + 1;
            if line.is_empty() && newline > self.leading {
                if newline + 1 - self.leading > limits.max_header_bytes {
                    return Err(CloseReason::HeaderTooLarge);
                }
                return Ok(Some(newline + 1));
            }
        }
        self.scanned = buf.len();
        if buf.len() - self.line_start > limits.max_header_line_bytes
            || buf.len() - self.leading > limits.max_header_bytes
        {
            return Err(CloseReason::HeaderTooLarge);
        }
        Ok(None)
    }
}

/// Pingora reads a head into a buffer of this size; so does this module, which hands it on.
const HEAD_BUFFER: usize = 4096;

thread_local! {
    /// Where a waiting keep-alive connection's first read lands, before it has a buffer of its
    /// own: used only within one poll, so one per worker thread serves all its connections.
    static FIRST_READ: RefCell<[u8; HEAD_BUFFER]> = const { RefCell::new([0; HEAD_BUFFER]) };
}

/// Reads what has arrived into `buf`. A buffer without room (a keep-alive connection waiting
/// for its next request holds none) is given one only once bytes are here: they are read
/// into [`FIRST_READ`] and copied, one read where a small first buffer would need two.
async fn read_some(stream: &mut Stream, buf: &mut BytesMut) -> std::io::Result<usize> {
    if buf.capacity() > buf.len() {
        return stream.read_buf(buf).await;
    }
    std::future::poll_fn(|cx| {
        FIRST_READ.with_borrow_mut(|scratch| {
            let mut read = ReadBuf::new(scratch);
            match Pin::new(&mut *stream).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) => {
                    let arrived = read.filled();
                    // `arrived` fits: the scratch buffer is HEAD_BUFFER long.
                    buf.reserve(HEAD_BUFFER);
                    buf.extend_from_slice(arrived);
                    Poll::Ready(Ok(arrived.len()))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        })
    })
    .await
}

/// Reads one request head (and whatever followed it in the same reads), within the
/// deadlines: `wait` for its first byte, then `header_timeout` from that byte (or, for a
/// new connection, from the accept) for the rest.
async fn read_head(
    stream: &mut Stream,
    limits: &ClientLimits,
    fresh: Option<Instant>,
    shutdown: &mut ShutdownWatch,
) -> Result<BytesMut, (NoHead, BytesMut)> {
    let header_timeout = Duration::from_millis(limits.header_timeout_ms);
    let mut deadline = match fresh {
        Some(accepted) => accepted + header_timeout,
        None => Instant::now() + Duration::from_millis(limits.idle_timeout_ms),
    };
    // A keep-alive connection may wait a long while for its next request: it waits without a
    // buffer, and the head's buffer is made once the request begins (`read_some`). A new
    // connection's request is on its way: the whole buffer.
    let mut buf = match fresh {
        Some(_) => BytesMut::with_capacity(HEAD_BUFFER),
        None => BytesMut::new(),
    };
    let mut scan = HeadScan::default();
    loop {
        let waiting = buf.is_empty();
        let read = tokio::select! {
            biased;
            read = tokio::time::timeout_at(deadline.into(), read_some(stream, &mut buf)) => read,
            // Draining: a keep-alive connection between requests is closed at once. A new
            // one was accepted to be served: its first request is awaited as usual.
            _ = shutdown.changed(), if waiting && fresh.is_none() => {
                return Err((NoHead::Closed, buf))
            }
        };
        match read {
            Err(_elapsed) => {
                let reason = if waiting && fresh.is_none() {
                    CloseReason::IdleTimeout
                } else {
                    CloseReason::HeaderTimeout
                };
                return Err((NoHead::Limit(reason), buf));
            }
            Ok(Ok(0)) | Ok(Err(_)) => return Err((NoHead::Closed, buf)),
            Ok(Ok(_)) => {}
        }
        if waiting && fresh.is_none() {
            // The first byte of a new request: from now on, the head's own deadline.
            deadline = Instant::now() + header_timeout;
        }
        match scan.feed(&buf, limits) {
            Ok(Some(_end)) => return Ok(buf),
            Ok(None) => {}
            Err(reason) => return Err((NoHead::Limit(reason), buf)),
        }
        if buf.capacity() == buf.len() {
            buf.reserve(HEAD_BUFFER);
        }
    }
}

#[async_trait]
impl ServerApp for GuardedHttp {
    /// Hands the connection to a task of its own and returns at once. The task Pingora
    /// spawns per accepted connection holds its TLS handshake's state inline (8.8 KB, the
    /// same for a plain TCP listener); a keep-alive connection would carry it for as long
    /// as it waits. The connection's own task holds [`GuardedHttp::serve`] alone.
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        tokio::spawn(self.clone().serve(stream, shutdown.clone()));
        None
    }

    async fn cleanup(&self) {
        self.proxy.http_cleanup().await;
    }
}

impl GuardedHttp {
    /// One client connection, from its admission to its close: every request it sends.
    async fn serve(self: Arc<Self>, mut stream: Stream, mut shutdown: ShutdownWatch) {
        let accepted = Instant::now();
        let _process_wide = ProcessWide::enter();
        let peer = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let snapshot = self.gateway.snapshot();
        let limits = snapshot
            .listeners
            .get(&*self.listener)
            .map(|l| l.client)
            .unwrap_or_default();
        let capped_address = peer.is_some_and(|ip| {
            !snapshot.internal.contains(ip) && !snapshot.trusted_proxies.contains(ip)
        });
        drop(snapshot);
        let _admitted = match self.open.admit(peer, &limits, capped_address) {
            Ok(admitted) => admitted,
            Err(reason) => {
                self.close(&mut stream, reason, peer, b"").await;
                return;
            }
        };
        let gauge = self
            .gateway
            .metrics
            .client_connections
            .with_label_values(&[&self.listener]);
        gauge.inc();
        let _gauge = scopeguard(move || gauge.dec());

        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            // HTTP/2 has its own flow control and Pingora's idle timeout; served as Pingora does.
            // Pingora's HTTP/2 server keeps the connection and hands nothing back.
            let _ = ServerApp::process_new(&self.proxy, stream, &shutdown).await;
            return;
        }

        let mut fresh = Some(accepted);
        let mut persistent = None;
        loop {
            let head = match read_head(&mut stream, &limits, fresh, &mut shutdown).await {
                Ok(head) => head,
                Err((NoHead::Limit(reason), head)) => {
                    self.close(&mut stream, reason, peer, &head).await;
                    return;
                }
                Err((NoHead::Closed, _)) => return,
            };
            fresh = None;
            let mut session = ServerSession::new_http1(stream);
            match persistent.take() {
                Some(settings) => pingora_core::apps::HttpPersistentSettings::apply_to_session(
                    settings,
                    &mut session,
                ),
                None => session.set_keepalive(Some(limits.idle_timeout_ms.div_ceil(1000))),
            }
            if *shutdown.borrow() {
                session.set_keepalive(None);
            }
            let link = Arc::new(RequestLink::default());
            session.set_connection_user_context(Some(Box::new(link.clone())));
            // The request line alone, kept for a log line after the head went to Pingora.
            let head_copy = first_line(&head).to_vec();
            session.set_pipelined_prefix(head);
            let started = Instant::now();
            let reused = self.proxy.process_new_http(session, &shutdown).await;
            if !link.reached_phases.load(Ordering::Acquire) {
                // Pingora refused the head itself (400, or 405 for CONNECT) and answered.
                self.count(CloseReason::MalformedRequest);
                let (method, _) = request_line(&head_copy);
                let status = if method.eq_ignore_ascii_case("CONNECT") {
                    405
                } else {
                    400
                };
                self.log_refusal(
                    status,
                    "client.malformed_request",
                    peer,
                    &head_copy,
                    &new_request_id(),
                    started,
                );
            }
            let Some(reused) = reused else { return };
            let (next, settings) = reused.consume();
            stream = next;
            persistent = settings;
        }
    }
}

/// Runs `f` when dropped.
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ClientLimits {
        ClientLimits {
            max_header_bytes: 64,
            max_header_line_bytes: 32,
            ..ClientLimits::default()
        }
    }

    /// Feeds `input` one piece at a time, as reads would deliver it.
    fn scan(pieces: &[&[u8]]) -> Result<Option<usize>, CloseReason> {
        let mut buf = Vec::new();
        let mut scan = HeadScan::default();
        let mut last = Ok(None);
        for piece in pieces {
            buf.extend_from_slice(piece);
            last = scan.feed(&buf, &limits());
            if !matches!(last, Ok(None)) {
                return last;
            }
        }
        last
    }

    #[test]
    fn a_head_ends_at_its_blank_line_however_it_is_split() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nBODY";
        for split in 0..head.len() {
            let (a, b) = head.split_at(split);
            assert_eq!(scan(&[a, b]), Ok(Some(head.len() - 4)), "split at {split}");
        }
        assert_eq!(scan(&[b"GET / HTTP/1.1\nHost: a\n\n"]), Ok(Some(24)));
        // Empty lines before the request line are skipped, not taken for the head's end.
        assert_eq!(scan(&[b"\r\n\r\nGET / HTTP/1.1\r\n\r\n"]), Ok(Some(22)));
        assert_eq!(scan(&[b"GET / HTTP/1.1\r\nHost: a\r\n"]), Ok(None));
    }

    #[test]
    fn a_head_or_line_just_past_its_cap_is_refused() {
        let line = |n: usize| format!("X: {}\r\n", "a".repeat(n - 3));
        let at_cap = format!("GET / HTTP/1.1\r\n{}\r\n", line(32));
        assert!(matches!(scan(&[at_cap.as_bytes()]), Ok(Some(_))));
        let past = format!("GET / HTTP/1.1\r\n{}\r\n", line(33));
        assert_eq!(scan(&[past.as_bytes()]), Err(CloseReason::HeaderTooLarge));
        // A line that never ends is refused as soon as it is too long.
        let open_line = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(40));
        assert_eq!(
            scan(&[open_line.as_bytes()]),
            Err(CloseReason::HeaderTooLarge)
        );
        // Many short lines add up to the total cap.
        let many = "GET / HTTP/1.1\r\n".to_string() + &"X: 1\r\n".repeat(10);
        assert_eq!(scan(&[many.as_bytes()]), Err(CloseReason::HeaderTooLarge));
        // A head of exactly the cap passes; one byte more does not.
        let head_of = |n: usize| {
            let fixed = "GET / HTTP/1.1\r\nX: \r\n\r\n".len();
            format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(n - fixed))
        };
        let limits = ClientLimits {
            max_header_bytes: 64,
            max_header_line_bytes: 64,
            ..ClientLimits::default()
        };
        let mut at_cap = HeadScan::default();
        assert_eq!(at_cap.feed(head_of(64).as_bytes(), &limits), Ok(Some(64)));
        let mut past = HeadScan::default();
        assert_eq!(
            past.feed(head_of(65).as_bytes(), &limits),
            Err(CloseReason::HeaderTooLarge)
        );
    }

    #[test]
    fn the_request_line_is_logged_clean() {
        let (m, p) = request_line(b"\r\nGET /a/b?token=x HTTP/1.1\r\nHost: a\r\n");
        assert_eq!((m.as_str(), p.as_str()), ("GET", "/a/b"));
        let (m, p) = request_line(b"G\x01T /\xff\"x HTTP/1.1\r\n");
        assert_eq!((m.as_str(), p.as_str()), ("G?T", "/?\"x"));
    }

    #[test]
    fn the_body_deadline_grows_with_what_arrives() {
        let limits = ClientLimits {
            body_timeout_ms: 1_000,
            min_body_rate: 1_000,
            ..ClientLimits::default()
        };
        let mut clock = BodyDeadline::new(&limits);
        let left = clock.remaining().expect("time left");
        assert!(left <= Duration::from_secs(1) && left > Duration::from_millis(900));
        clock.received(10_000);
        assert!(clock.remaining().expect("time left") > Duration::from_secs(10));
        // Past the deadline: nothing left.
        clock.start -= Duration::from_secs(12);
        assert_eq!(clock.remaining(), None);
        let strict = BodyDeadline {
            min_rate: 0,
            ..BodyDeadline::new(&limits)
        };
        let mut strict = strict;
        strict.received(1 << 30);
        assert!(strict.remaining().expect("left") <= Duration::from_secs(1));
    }

    #[test]
    fn admission_caps_the_listener_and_each_address() {
        let open = OpenConnections::default();
        let limits = ClientLimits {
            max_connections: 3,
            max_connections_per_address: 2,
            ..ClientLimits::default()
        };
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let b: IpAddr = "192.0.2.2".parse().expect("ip");
        let first = open.admit(Some(a), &limits, true).expect("first");
        let _second = open.admit(Some(a), &limits, true).expect("second");
        assert_eq!(
            open.admit(Some(a), &limits, true).err(),
            Some(CloseReason::TooManyFromAddress)
        );
        let _third = open.admit(Some(b), &limits, true).expect("other address");
        assert_eq!(
            open.admit(Some(b), &limits, false).err(),
            Some(CloseReason::TooManyConnections)
        );
        drop(first);
        let _again = open
            .admit(Some(a), &limits, true)
            .expect("a place was freed");
        assert_eq!(open.total.load(Ordering::Acquire), 3);
    }

    /// An idle keep-alive connection must not keep the task Pingora spawned when it accepted
    /// it (its handshake's state, 8.8 KB): `process_new` hands the connection to a small task
    /// of its own and returns before the client has sent anything, and that task serves it.
    #[test]
    fn a_connection_is_served_by_a_small_task_of_its_own() {
        use std::mem::size_of_val;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let (_rules, gateway) = Gateway::for_test(crate::reload::ONE_ROUTE);
            let conf = Arc::new(pingora_core::server::configuration::ServerConf::default());
            let proxy = pingora_proxy::http_proxy(&conf, RampartProxy::new("web", gateway.clone()));
            let guarded = Arc::new(GuardedHttp::new("web", gateway, proxy));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr");
            let (_shutdown, watch) = tokio::sync::watch::channel(false);
            let boxed = |tcp: tokio::net::TcpStream| -> Stream {
                let l4: pingora_core::protocols::l4::stream::Stream = tcp.into();
                Box::new(l4)
            };

            let _unused_client = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let (accepted, _) = listener.accept().await.expect("accept");
            let task = size_of_val(&guarded.clone().serve(boxed(accepted), watch.clone()));
            assert!(task <= 2048, "a connection's task: {task} bytes");

            let mut client = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let (accepted, _) = listener.accept().await.expect("accept");
            let returned = tokio::time::timeout(
                Duration::from_secs(5),
                guarded.process_new(boxed(accepted), &watch),
            )
            .await;
            assert!(
                matches!(returned, Ok(None)),
                "process_new must return at once, the connection handed on"
            );
            client
                .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
                .await
                .expect("send");
            let mut answer = [0u8; 12];
            tokio::time::timeout(Duration::from_secs(10), client.read_exact(&mut answer))
                .await
                .expect("answered in time")
                .expect("an answer");
            // The route's upstream refuses connections: the proxy's own answer for that.
            assert_eq!(
                &answer,
                b"HTTP/1.1 502",
                "{}",
                String::from_utf8_lossy(&answer)
            );
        });
    }
}
