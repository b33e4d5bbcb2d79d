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
use rampart_plugins::net::push_ip;

/// Lines waiting for the writer, in bytes: seconds of a busy proxy's log.
const PENDING_BYTES: usize = 4 << 20;
/// Past this much waiting, the writer is woken rather than left to its next round.
const WAKE_BYTES: usize = 256 << 10;
/// How long a line may wait for the writer's next round.
const ROUND: Duration = Duration::from_millis(20);

/// One request's line. Optional fields marked "left out" are absent when `None`; the
/// others are written as `null`.
pub struct Entry<'a> {
    pub listener: &'a str,
    pub route: &'a str,
    pub upstream: Option<&'a str>,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    /// Written in milliseconds, to the microsecond.
    pub duration: Duration,
    pub peer: IpAddr,
    pub client: IpAddr,
    /// The verified caller (a JWT's client id and team), when a plugin verified one: left out.
    pub client_id: Option<&'a str>,
    pub team: Option<&'a str>,
    /// (plugin, rule id) when the request was refused.
    pub refused_by: Option<(&'static str, &'a str)>,
    /// (plugin, rule id) of the matches in count mode: left out when none.
    pub counted_by: &'a [(&'static str, String)],
    pub request_id: &'a str,
    pub upstream_error: Option<&'static str>,
    /// Tokens an LLM provider reported for its answer: left out.
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
}

pub fn write(entry: &Entry<'_>) {
    let mut line = line(entry);
    line.push(b'\n');
    match SINK.get() {
        Some(sink) => sink.push(&line),
        // No writer started (a tool, a test): write here.
        None => write_out(&line),
    }
}

/// A field's name as the line writes it, `"name":`, made at compile time: the line's names
/// are its own and never need escaping.
macro_rules! key {
    ($name:literal) => {
        concat!("\"", $name, "\":")
    };
}

/// The entry as one JSON object with the time (`ts`, Unix seconds) first. Written by hand:
/// serde's derive cost four thousand instructions a line, most of them formatting the two
/// addresses through `Display`, a fifth of the adapter's own work per request.
fn line(entry: &Entry<'_>) -> Vec<u8> {
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let mut o = JsonObject::with_capacity(384);
    o.key(key!("ts"));
    o.micros(ts.as_secs(), ts.subsec_micros(), 6);
    o.str(key!("listener"), entry.listener);
    o.str(key!("route"), entry.route);
    o.opt_str(key!("upstream"), entry.upstream);
    o.str(key!("method"), entry.method);
    o.str(key!("path"), entry.path);
    o.key(key!("status"));
    o.uint(u64::from(entry.status));
    o.key(key!("duration"));
    let us = entry.duration.as_micros();
    o.micros(
        u64::try_from(us / 1000).unwrap_or(u64::MAX),
        (us % 1000) as u32,
        3,
    );
    o.ip(key!("peer"), entry.peer);
    o.ip(key!("client"), entry.client);
    if let Some(id) = entry.client_id {
        o.str(key!("client_id"), id);
    }
    if let Some(team) = entry.team {
        o.str(key!("team"), team);
    }
    o.key(key!("refused_by"));
    match entry.refused_by {
        Some((plugin, rule)) => {
            o.out.push(b'[');
            o.string(plugin);
            o.out.push(b',');
            o.string(rule);
            o.out.push(b']');
        }
        None => o.out.extend_from_slice(b"null"),
    }
    if !entry.counted_by.is_empty() {
        o.key(key!("counted_by"));
        o.out.push(b'[');
        for (i, (plugin, rule)) in entry.counted_by.iter().enumerate() {
            if i > 0 {
                o.out.push(b',');
            }
            o.out.push(b'[');
            o.string(plugin);
            o.out.push(b',');
            o.string(rule);
            o.out.push(b']');
        }
        o.out.push(b']');
    }
    o.str(key!("request_id"), entry.request_id);
    o.opt_str(key!("upstream_error"), entry.upstream_error);
    for (name, tokens) in [
        (key!("prompt_tokens"), entry.prompt_tokens),
        (key!("completion_tokens"), entry.completion_tokens),
    ] {
        if let Some(n) = tokens {
            o.key(name);
            o.uint(n);
        }
    }
    o.finish()
}

/// A JSON object written field by field, in the order given.
struct JsonObject {
    out: Vec<u8>,
}

impl JsonObject {
    fn with_capacity(bytes: usize) -> Self {
        let mut out = Vec::with_capacity(bytes);
        out.push(b'{');
        Self { out }
    }

    /// A field's name (from [`key!`]), after a comma unless it is the first field.
    fn key(&mut self, quoted: &'static str) {
        if self.out.len() > 1 {
            self.out.push(b',');
        }
        self.out.extend_from_slice(quoted.as_bytes());
    }

    fn str(&mut self, name: &'static str, value: &str) {
        self.key(name);
        self.string(value);
    }

    fn opt_str(&mut self, name: &'static str, value: Option<&str>) {
        self.key(name);
        match value {
            Some(v) => self.string(v),
            None => self.out.extend_from_slice(b"null"),
        }
    }

    fn ip(&mut self, name: &'static str, ip: IpAddr) {
        self.key(name);
        self.out.push(b'"');
        push_ip(&mut self.out, ip);
        self.out.push(b'"');
    }

    fn uint(&mut self, n: u64) {
        self.out
            .extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    }

    /// `whole.fraction` with the fraction zero-padded to `digits` places.
    fn micros(&mut self, whole: u64, fraction: u32, digits: usize) {
        self.uint(whole);
        self.out.push(b'.');
        let mut buffer = itoa::Buffer::new();
        let text = buffer.format(fraction);
        self.out
            .extend(std::iter::repeat_n(b'0', digits.saturating_sub(text.len())));
        self.out.extend_from_slice(text.as_bytes());
    }

    /// A JSON string: quotes, backslashes and control characters escaped, the rest (UTF-8
    /// included) as it is.
    fn string(&mut self, value: &str) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let bytes = value.as_bytes();
        self.out.push(b'"');
        let mut run = 0;
        for (i, &b) in bytes.iter().enumerate() {
            let short: &[u8] = match b {
                b'"' => b"\\\"",
                b'\\' => b"\\\\",
                b'\n' => b"\\n",
                b'\r' => b"\\r",
                b'\t' => b"\\t",
                0..=0x1f => b"",
                _ => continue,
            };
            self.out.extend_from_slice(&bytes[run..i]);
            run = i + 1;
            if short.is_empty() {
                self.out.extend_from_slice(b"\\u00");
                self.out.push(HEX[usize::from(b >> 4)]);
                self.out.push(HEX[usize::from(b & 0xf)]);
            } else {
                self.out.extend_from_slice(short);
            }
        }
        self.out.extend_from_slice(&bytes[run..]);
        self.out.push(b'"');
    }

    fn finish(mut self) -> Vec<u8> {
        self.out.push(b'}');
        self.out
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
            counted_by: &[
                ("bot_control", "SignalNonBrowserUserAgent".to_string()),
                ("owasp", "XSS \"quoted\"".to_string()),
            ],
            request_id: "r-1",
            upstream_error: None,
            prompt_tokens: None,
            completion_tokens: Some(7),
        };
        let line = line(&entry);
        let text = String::from_utf8(line).expect("utf-8");
        assert!(text.starts_with("{\"ts\":"), "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).expect("one JSON object");
        assert!(v["ts"].as_f64().is_some_and(|t| t > 1.7e9));
        assert_eq!(v["path"], "/v1/chat/\"quoted\"");
        assert_eq!(v["duration"], 1.5);
        assert_eq!(v["refused_by"], serde_json::json!(["owasp", "SQLi_BODY"]));
        assert_eq!(
            v["counted_by"],
            serde_json::json!([
                ["bot_control", "SignalNonBrowserUserAgent"],
                ["owasp", "XSS \"quoted\""]
            ])
        );
        assert_eq!(v["team"], "ml");
        assert!(v.get("client_id").is_none());
        assert_eq!(v["completion_tokens"], 7);
    }

    #[test]
    fn any_path_and_rule_survive_the_round_trip() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let alphabet: Vec<char> = "ab/\"\\\n\r\t\u{0}\u{1f}\u{7f}é€😀 ".chars().collect();
        for _ in 0..2_000 {
            let len = (next() % 24) as usize;
            let text: String = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            let micros = next() % 10_000_000_000;
            let entry = Entry {
                listener: "web",
                route: &text,
                upstream: None,
                method: "GET",
                path: &text,
                status: 200,
                duration: Duration::from_micros(micros),
                peer: IpAddr::from([10, 0, 0, 1]),
                client: "2001:db8::7".parse().expect("v6"),
                client_id: Some(&text),
                team: None,
                refused_by: Some(("waf", &text)),
                counted_by: &[],
                request_id: "r",
                upstream_error: Some("timeout"),
                prompt_tokens: Some(next()),
                completion_tokens: None,
            };
            let line = line(&entry);
            assert!(
                !line.windows(10).any(|w| w == b"counted_by"),
                "left out when none"
            );
            let v: serde_json::Value = serde_json::from_slice(&line)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&line)));
            assert_eq!(v["path"], text.as_str());
            assert_eq!(v["route"], text.as_str());
            assert_eq!(v["client_id"], text.as_str());
            assert_eq!(v["refused_by"][1], text.as_str());
            assert_eq!(v["upstream"], serde_json::Value::Null);
            assert_eq!(v["client"], "2001:db8::7");
            assert_eq!(v["peer"], "10.0.0.1");
            assert_eq!(v["upstream_error"], "timeout");
            assert!(v.get("team").is_none() && v.get("completion_tokens").is_none());
            let ms = v["duration"].as_f64().expect("a number");
            assert!(
                (ms * 1000.0 - micros as f64).abs() < 1.0,
                "{ms} ms for {micros} µs"
            );
        }
    }
}
