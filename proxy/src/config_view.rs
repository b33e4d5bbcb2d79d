//! The configuration in force, as the admin listener shows it (`GET /config`), and what a
//! reload changes (its log line, and `POST /reload?dry_run=1`).
//!
//! `/config` gives the files the running rules were built from: gateway.toml and the model
//! table as parsed (JSON), every rule file with its SHA-256, and the generation. Secret
//! values never live in these files (they name sources: environment variables, files,
//! Secrets Manager ids), but a value can still slip in (a Redis URL's password, a value
//! pasted where a name belongs): every string holding a secret's current value, and every
//! URL's password, is replaced by `"<redacted>"` before anything is shown.

use serde_json::{json, Map, Value};

use crate::snapshot::RuleSnapshot;

pub const REDACTED: &str = "<redacted>";

/// A file the rules were built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRecord {
    /// As read, below the rules directory.
    pub path: String,
    /// SHA-256 of the bytes, hex.
    pub sha256: String,
    /// The text of a TOML file shown whole (gateway.toml, the model table); rule files are
    /// only hashed.
    pub toml: Option<String>,
}

impl SourceRecord {
    pub fn new(path: &str, bytes: &[u8], shown: bool) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
        let mut sha256 = String::with_capacity(64);
        for b in digest.as_ref() {
            sha256.push_str(&format!("{b:02x}"));
        }
        SourceRecord {
            path: path.to_string(),
            sha256,
            toml: shown.then(|| String::from_utf8_lossy(bytes).into_owned()),
        }
    }
}

/// `GET /config`: the generation, every source file's hash, and the TOML files as JSON,
/// redacted.
pub fn view(snapshot: &RuleSnapshot) -> Value {
    let secrets = snapshot.secret_values();
    let mut files = Vec::new();
    let mut parsed = Map::new();
    for source in &snapshot.sources {
        files.push(json!({ "path": source.path, "sha256": source.sha256 }));
        if let Some(text) = &source.toml {
            let value = toml::from_str::<toml::Value>(text)
                .ok()
                .and_then(|t| serde_json::to_value(t).ok())
                .unwrap_or(Value::Null);
            parsed.insert(source.path.clone(), value);
        }
    }
    let mut out = json!({
        "generation": snapshot.generation,
        "files": files,
        "config": parsed,
    });
    redact(&mut out, &secrets);
    out
}

/// Replaces every string holding one of `secrets` (at least four bytes long) and every URL's
/// password with [`REDACTED`], keys included.
pub fn redact(value: &mut Value, secrets: &[Vec<u8>]) {
    match value {
        Value::String(s) => {
            if let Some(clean) = redacted(s, secrets) {
                *s = clean;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| redact(v, secrets)),
        Value::Object(map) => {
            let entries = std::mem::take(map);
            for (key, mut v) in entries {
                redact(&mut v, secrets);
                let key = redacted(&key, secrets).unwrap_or(key);
                map.insert(key, v);
            }
        }
        _ => {}
    }
}

fn redacted(s: &str, secrets: &[Vec<u8>]) -> Option<String> {
    let holds_secret = secrets
        .iter()
        .filter(|v| v.len() >= 4)
        .any(|v| memchr::memmem::find(s.as_bytes(), v).is_some());
    if holds_secret {
        return Some(REDACTED.to_string());
    }
    // scheme://user:password@host...: the password goes.
    let (scheme, rest) = s.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let (userinfo, host) = authority.rsplit_once('@')?;
    let (user, _password) = userinfo.split_once(':')?;
    let after = &rest[authority.len()..];
    Some(format!("{scheme}://{user}:{REDACTED}@{host}{after}"))
}

/// What `new` changes against `old`, one line each: files, listeners and their plugins and
/// routes, rule counts, upstreams, the model table.
pub fn changes(old: &RuleSnapshot, new: &RuleSnapshot) -> Vec<String> {
    let mut out = Vec::new();
    for source in &new.sources {
        match old.sources.iter().find(|o| o.path == source.path) {
            None => out.push(format!("{}: new", source.path)),
            Some(o) if o.sha256 != source.sha256 => out.push(format!("{}: changed", source.path)),
            Some(_) => {}
        }
    }
    for source in &old.sources {
        if !new.sources.iter().any(|n| n.path == source.path) {
            out.push(format!("{}: no longer read", source.path));
        }
    }
    let mut names: Vec<&String> = old.listeners.keys().chain(new.listeners.keys()).collect();
    names.sort();
    names.dedup();
    for name in names {
        match (old.listeners.get(name), new.listeners.get(name)) {
            (None, Some(_)) => out.push(format!("listener {name}: added")),
            (Some(_), None) => out.push(format!("listener {name}: removed")),
            (Some(o), Some(n)) => {
                let (op, np) = (o.chain.plugin_names(), n.chain.plugin_names());
                if op != np {
                    out.push(format!(
                        "listener {name}: plugins [{}] -> [{}]",
                        op.join(", "),
                        np.join(", ")
                    ));
                }
                let (or, nr) = (o.chain.rule_count(), n.chain.rule_count());
                if or != nr {
                    out.push(format!("listener {name}: rules {or} -> {nr}"));
                }
                let (op, np) = (o.route_prefixes(), n.route_prefixes());
                if op != np {
                    out.push(format!(
                        "listener {name}: routes [{}] -> [{}]",
                        op.join(", "),
                        np.join(", ")
                    ));
                }
            }
            (None, None) => {}
        }
    }
    let (ou, nu): (Vec<&String>, Vec<&String>) = (
        old.upstreams.keys().collect(),
        new.upstreams.keys().collect(),
    );
    if ou != nu {
        out.push(format!("upstreams [{}] -> [{}]", join(&ou), join(&nu)));
    }
    for (name, pool) in &new.upstreams {
        if let Some(o) = old.upstreams.get(name) {
            if o.config != pool.config {
                out.push(format!("upstream {name}: settings changed"));
            }
        }
    }
    let models = |s: &RuleSnapshot| s.llm.as_ref().map_or(0, |l| l.table.model_ids().count());
    if models(old) != models(new) {
        out.push(format!("models: {} -> {} names", models(old), models(new)));
    }
    out
}

fn join(names: &[&String]) -> String {
    names
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_values_and_url_passwords_are_redacted_wherever_they_are() {
        let secrets = vec![b"s3cr3t-value".to_vec(), b"ab".to_vec()];
        let mut v = json!({
            "redis": "redis://rampart:pa55w0rd@10.0.0.5:6379/0",
            "plain": "https://example.com/path",
            "pasted": "Bearer s3cr3t-value",
            "s3cr3t-value": ["x", { "deep": "s3cr3t-value" }],
            "short": "ab",
        });
        redact(&mut v, &secrets);
        let text = v.to_string();
        assert!(
            !text.contains("s3cr3t-value") && !text.contains("pa55w0rd"),
            "{text}"
        );
        assert_eq!(v["redis"], "redis://rampart:<redacted>@10.0.0.5:6379/0");
        assert_eq!(v["plain"], "https://example.com/path");
        assert_eq!(v["pasted"], REDACTED);
        assert_eq!(v[REDACTED][1]["deep"], REDACTED);
        assert_eq!(
            v["short"], "ab",
            "values under four bytes would redact everything"
        );
    }

    #[test]
    fn a_source_record_hashes_its_bytes() {
        let r = SourceRecord::new("gateway.toml", b"abc", true);
        assert_eq!(
            r.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(r.toml.as_deref(), Some("abc"));
        assert_eq!(SourceRecord::new("waf/x.toml", b"abc", false).toml, None);
    }
}
