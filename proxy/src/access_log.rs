//! One JSON line per request on stdout. Headers and query strings are never written:
//! they are where secrets and tokens travel.

use std::io::Write;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

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
    // A full or closed stdout must not fail the request.
    let _ = std::io::stdout().lock().write_all(&line);
}
