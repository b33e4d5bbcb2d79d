//! What becomes of a request body the client is still sending when its answer is already
//! written: after a refusal, or when the upstream answered before reading it all.
//!
//! Closing a socket with unread data resets it, and the client may then never read its
//! answer; closing a keep-alive connection for an upload the upstream did not want costs
//! the client a new handshake. So a chunked body, or one declared within bounds, is read and
//! dropped within a time bound; a larger declared one is cut.

use std::time::Duration;

use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use pingora_http::RequestHeader;
use pingora_proxy::Session;

/// A body declared up to this size is read and dropped rather than cut off.
const DRAIN_LIMIT: u64 = 8 << 20;
/// The longest a drain may take; a client slower than this loses its connection.
const DRAIN_TIME: Duration = Duration::from_secs(2);

/// The declared body length (framing was validated before this is asked).
pub fn content_length(req: &RequestHeader) -> Option<u64> {
    req.headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Whether a body may be drained: chunked (within [`DRAIN_TIME`]) or declared within
/// [`DRAIN_LIMIT`].
fn drainable(req: &RequestHeader) -> bool {
    req.headers.contains_key(TRANSFER_ENCODING)
        || content_length(req).is_some_and(|n| n > 0 && n <= DRAIN_LIMIT)
}

/// After a refusal: reads and drops what the client is still sending, within bounds.
/// The refusal already told the client the connection closes.
pub async fn drain_after_refusal(session: &mut Session) {
    if drainable(session.req_header()) && !session.is_body_done() {
        let _ = tokio::time::timeout(DRAIN_TIME, session.drain_request_body()).await;
    }
}

/// Before an upstream's answer is written while the body is still arriving: keeps the
/// connection alive when the rest can be drained (Pingora reads it off before the next
/// request, within [`DRAIN_TIME`]), and lets Pingora announce `Connection: close` otherwise.
/// Until the answer is complete the rest of the body still goes to the upstream, under the
/// body deadline like any other.
pub fn keep_alive_if_drainable(session: &mut Session) {
    if session.is_body_done() || !drainable(session.req_header()) {
        return;
    }
    let downstream = session.as_downstream_mut();
    downstream.set_close_on_response_before_downstream_finish(false);
    downstream.set_total_drain_timeout(Some(DRAIN_TIME));
}
