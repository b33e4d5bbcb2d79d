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

#[derive(Serialize)]
struct Line<'a> {
    ts: f64,
    #[serde(flatten)]
    entry: &'a Entry<'a>,
}

pub fn write(entry: &Entry<'_>) {
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let Ok(mut line) = serde_json::to_vec(&Line { ts, entry }) else {
        return;
    };
    line.push(b'\n');
    match SINK.get() {
        Some(sink) => sink.push(&line),
        // No writer started (a tool, a test): write here.
        None => write_out(&line),
    }
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
