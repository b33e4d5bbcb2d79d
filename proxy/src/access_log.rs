//! One JSON line per request on stdout. Headers and query strings are never written:
//! they are where secrets and tokens travel.
//!
//! A worker thread only formats its line and appends it to a shared buffer, which a writer
//! thread empties to stdout every few milliseconds: a write to stdout is a system call per
//! request, and a pipe whose reader falls behind would block the worker and every request on
//! it. Nothing wakes the writer per line (on a proxy pinned to one core, a wake-up per
//! request cost more than the write it saved). When the buffer is full the line is dropped
//! and counted (`rampart_access_log_dropped_total`): the log is for people, the requests
//! come first.

use std::io::Write;
use std::net::IpAddr;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::thread::Thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::IntCounter;
use serde::Serialize;

/// Lines waiting for the writer, in bytes: seconds of a busy proxy's log.
const PENDING_BYTES: usize = 4 << 20;
/// Past this much waiting, the writer is woken rather than left to its next round.
const WAKE_BYTES: usize = 256 << 10;
/// How long a line may wait for the writer's next round.
const ROUND: Duration = Duration::from_millis(20);

#[derive(Serialize)]
pub struct Entry<'a> {
    pub listener: &'a str,
    pub route: &'a str,
    pub upstream: Option<&'a str>,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    #[serde(serialize_with = "as_millis")]
    pub duration: Duration,
    pub peer: IpAddr,
    pub client: IpAddr,
    /// The verified caller (a JWT's client id and team), when a plugin verified one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team: Option<&'a str>,
    /// (plugin, rule id) when the request was refused.
    pub refused_by: Option<(&'static str, &'a str)>,
    pub request_id: &'a str,
    pub upstream_error: Option<&'static str>,
    /// Tokens an LLM provider reported for its answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion_tokens: Option<u64>,
}

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

pub fn write(entry: &Entry<'_>) {
    let Some(mut line) = line(entry) else { return };
    line.push(b'\n');
    match SINK.get() {
        Some(sink) => sink.push(&line),
        // No writer started (a tool, a test): write here.
        None => write_out(&line),
    }
}

/// The entry as one JSON object with the time (`ts`, Unix seconds) first. Written as
/// `{"ts":…,` and the entry's own object after its `{`: serde's `flatten` did the same through
/// a map serializer, at four fifths of the line's cost.
fn line(entry: &Entry<'_>) -> Option<Vec<u8>> {
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let mut line = Vec::with_capacity(384);
    line.extend_from_slice(b"{\"ts\":");
    serde_json::to_writer(&mut line, &ts).ok()?;
    line.push(b',');
    let at = line.len();
    serde_json::to_writer(&mut line, entry).ok()?;
    // The entry's opening brace: its fields follow the time's.
    (line.get(at) == Some(&b'{')).then(|| line.remove(at))?;
    Some(line)
}

struct Sink {
    pending: Mutex<Vec<u8>>,
    dropped: IntCounter,
    writer: Thread,
}

impl Sink {
    fn push(&self, line: &[u8]) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if pending.len() + line.len() > PENDING_BYTES {
            drop(pending);
            self.dropped.inc();
            return;
        }
        pending.extend_from_slice(line);
        if pending.len() >= WAKE_BYTES {
            self.writer.unpark();
        }
    }
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// Starts the writer thread; lines written before it started were written in place. Lines
/// dropped because stdout fell behind count on `dropped`.
pub fn start(dropped: IntCounter) -> std::io::Result<()> {
    if SINK.get().is_some() {
        return Ok(());
    }
    let writer = std::thread::Builder::new()
        .name("rampart-access-log".into())
        .spawn(writer)?;
    let _ = SINK.set(Sink {
        pending: Mutex::new(Vec::new()),
        dropped,
        writer: writer.thread().clone(),
    });
    Ok(())
}

/// Writes the lines waiting for the writer now: before the process exits.
pub fn flush() {
    if let Some(sink) = SINK.get() {
        let batch =
            std::mem::take(&mut *sink.pending.lock().unwrap_or_else(PoisonError::into_inner));
        write_out(&batch);
    }
}

fn writer() {
    let mut batch = Vec::new();
    loop {
        std::thread::park_timeout(ROUND);
        let Some(sink) = SINK.get() else { continue };
        {
            let mut pending = sink.pending.lock().unwrap_or_else(PoisonError::into_inner);
            std::mem::swap(&mut *pending, &mut batch);
        }
        if !batch.is_empty() {
            write_out(&batch);
            batch.clear();
        }
    }
}

fn write_out(bytes: &[u8]) {
    // A full or closed stdout must not fail a request.
    let _ = std::io::stdout().lock().write_all(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_one_json_object_with_the_time_first() {
        let entry = Entry {
            listener: "web",
            route: "litellm",
            upstream: Some("litellm"),
            method: "POST",
            path: "/v1/chat/\"quoted\"",
            status: 403,
            duration: Duration::from_micros(1500),
            peer: IpAddr::from([203, 0, 113, 7]),
            client: IpAddr::from([198, 51, 100, 4]),
            client_id: None,
            team: Some("ml"),
            refused_by: Some(("owasp", "SQLi_BODY")),
            request_id: "r-1",
            upstream_error: None,
            prompt_tokens: None,
            completion_tokens: Some(7),
        };
        let line = line(&entry).expect("serialises");
        let text = String::from_utf8(line).expect("utf-8");
        assert!(text.starts_with("{\"ts\":"), "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).expect("one JSON object");
        assert!(v["ts"].as_f64().is_some_and(|t| t > 1.7e9));
        assert_eq!(v["path"], "/v1/chat/\"quoted\"");
        assert_eq!(v["duration"], 1.5);
        assert_eq!(v["refused_by"], serde_json::json!(["owasp", "SQLi_BODY"]));
        assert_eq!(v["team"], "ml");
        assert!(v.get("client_id").is_none());
        assert_eq!(v["completion_tokens"], 7);
    }
}
