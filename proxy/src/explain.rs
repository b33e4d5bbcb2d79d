//! `rampart rules test FILE`: runs a listener's chain over a raw HTTP request read from a
//! file and prints which rules match and why, before an SRE turns a rule on; the last line
//! is the answer the client would get, and a refusal makes the command exit non-zero, so
//! that it can gate rule changes in CI.

use std::fmt::Write as _;
use std::path::Path;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use rampart_plugins::path::{has_segment_prefix, normalize};
use rampart_plugins::{now_or_never, Chain, Judgement, RequestView, Stage};
use thiserror::Error;

use crate::snapshot::explain_chain;

#[derive(Debug, Error)]
pub enum ExplainError {
    #[error("{0}: cannot read: {1}")]
    Read(String, std::io::Error),
    #[error("{file}: not an HTTP request: {reason}")]
    Request { file: String, reason: String },
    #[error("{0}")]
    Rules(#[from] crate::config::ConfigError),
}

/// A request as written in a file: request line, headers, blank line, body.
struct RawRequest {
    method: Method,
    target: String,
    headers: HeaderMap,
    body: Vec<u8>,
}

fn parse(file: &str, bytes: &[u8]) -> Result<RawRequest, ExplainError> {
    let bad = |reason: &str| ExplainError::Request {
        file: file.to_string(),
        reason: reason.to_string(),
    };
    let (head, body) = match bytes.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => (&bytes[..i], &bytes[i + 4..]),
        None => match bytes.windows(2).position(|w| w == b"\n\n") {
            Some(i) => (&bytes[..i], &bytes[i + 2..]),
            None => (bytes, &b""[..]),
        },
    };
    let head = std::str::from_utf8(head).map_err(|_| bad("the header is not UTF-8"))?;
    let mut lines = head.lines();
    let request_line = lines.next().ok_or_else(|| bad("empty file"))?;
    let mut parts = request_line.split_whitespace();
    let method = parts.next().ok_or_else(|| bad("no method"))?;
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| bad("bad method"))?;
    let target = parts
        .next()
        .ok_or_else(|| bad("no request target"))?
        .to_string();
    let mut headers = HeaderMap::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| bad(&format!("header line without ':': {line:?}")))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| bad(&format!("bad header name {name:?}")))?;
        let value = HeaderValue::from_str(value.trim())
            .map_err(|_| bad(&format!("bad value for {name}")))?;
        headers.append(name, value);
    }
    Ok(RawRequest {
        method,
        target,
        headers,
        body: body.to_vec(),
    })
}

/// The report for one request file.
/// What `rules test` found for one request: the report, and the client's answer.
pub struct Explained {
    pub report: String,
    pub answer: Answer,
}

/// The client's answer, as the chain decides it without waiting for anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Passed,
    Refused,
    /// A plugin would wait to decide (a key fetch for an unknown `kid`, a shared store),
    /// which `rules test` does not do: neither answer can be said.
    Undecided,
}

pub fn explain(rules: &Path, listener: &str, file: &Path) -> Result<Explained, ExplainError> {
    let name = file.display().to_string();
    let bytes = std::fs::read(file).map_err(|e| ExplainError::Read(name.clone(), e))?;
    let req = parse(&name, &bytes)?;
    let (raw_path, query) = match req.target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (req.target.as_str(), None),
    };
    let path = normalize(raw_path).map_err(|e| ExplainError::Request {
        file: name.clone(),
        reason: format!("path: {e} (rampart answers 400)"),
    })?;
    let chain = explain_chain(rules, listener)?;
    let route = chain
        .routes
        .iter()
        .find(|(prefix, _)| has_segment_prefix(&path, prefix, false))
        .map_or("none", |(_, route)| route.as_str());
    let peer = std::net::IpAddr::from([203, 0, 113, 1]);
    // As in the proxy: what the chain consumes never reaches the upstream, nor the WAF.
    let mut consumed: Vec<http::HeaderName> = Vec::new();
    for (_, entry) in &chain.plugins {
        if let Ok(entry) = entry {
            consumed.extend(entry.plugin.consumed_headers().iter().cloned());
        }
    }
    let view = RequestView {
        listener,
        route,
        peer,
        client: peer,
        method: &req.method,
        path: &path,
        query,
        headers: &req.headers,
        consumed: &consumed,
        body: (!req.body.is_empty()).then_some(req.body.as_slice()),
        body_items: &[],
        identity: None,
        inspections: None,
    };
    let mut out = String::new();
    let _ = writeln!(out, "{} {} on listener {listener}, route {route} (normalised path {path}), from an external peer", req.method, req.target);
    for (kind, entry) in &chain.plugins {
        match entry {
            Err(why) => {
                let _ = writeln!(out, "  {kind}: not run here: {why}");
            }
            Ok(entry) => {
                let findings = entry.plugin.explain(&view);
                if findings.is_empty() {
                    let _ = writeln!(out, "  {kind}: passes");
                }
                for line in findings {
                    let _ = writeln!(out, "  {kind}: {line}");
                }
            }
        }
    }
    // The answer, decided by the proxy's own chain evaluation over the plugins that built
    // (the first blocking refusal ends it; counted ones only count; a verified identity is
    // seen by the plugins after it). Nothing here waits: a shared store is not connected.
    let entries = chain
        .plugins
        .into_iter()
        .filter_map(|(_, e)| e.ok())
        .collect();
    let chain = Chain::new(entries);
    let judgement = now_or_never(chain.evaluate(&view, Stage::All, |_| {}));
    let answer = write_answer(&mut out, judgement.as_ref(), route);
    Ok(Explained {
        report: out,
        answer,
    })
}

/// The report's last line: the answer of a chain evaluation that finished, or that none did.
fn write_answer(out: &mut String, judgement: Option<&Judgement>, route: &str) -> Answer {
    let Some(judgement) = judgement else {
        let _ = writeln!(
            out,
            "answer: undecided: a plugin waits to decide (a key fetch or a shared store), \
             which rules test does not do"
        );
        return Answer::Undecided;
    };
    match &judgement.denied {
        Some((plugin, deny)) => {
            let _ = writeln!(
                out,
                "answer: {} from {plugin} ({}), the upstream sees nothing",
                deny.status,
                deny.reason()
            );
            Answer::Refused
        }
        None => {
            let _ = writeln!(out, "answer: passed on to route {route}");
            Answer::Passed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_request_file() {
        let r = parse("x", b"POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n\r\n{\"a\":1}").expect("parses");
        assert_eq!(r.method, Method::POST);
        assert_eq!(r.target, "/v1/chat/completions?x=1");
        assert_eq!(r.headers.len(), 2);
        assert_eq!(r.body, b"{\"a\":1}");
        assert!(parse("x", b"").is_err());
        assert!(parse("x", b"GET / HTTP/1.1\nbroken header\n\n").is_err());
    }

    /// A chain that did not finish (a plugin waiting on a key fetch) is neither a pass nor
    /// a refusal.
    #[test]
    fn an_unfinished_evaluation_is_undecided_not_passed() {
        let mut out = String::new();
        assert_eq!(write_answer(&mut out, None, "litellm"), Answer::Undecided);
        assert!(out.starts_with("answer: undecided"), "{out}");
        assert!(!out.contains("passed"), "{out}");
    }
}
