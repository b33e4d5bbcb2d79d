//! OpenTelemetry trace and log exports (OTLP over HTTP, protobuf or JSON) read as the
//! fields they carry, not as bytes.
//!
//! Grepping a protobuf export as text reads its length bytes as line breaks and its binary
//! ids as shell syntax; grepping either encoding as one blob reads every prompt a trace
//! recorded as if it were a parameter. Instead each string is a field with a path:
//!
//! | path | what |
//! |---|---|
//! | `resource.attributes.<key>` | the exporting service (`service.name`, ...) |
//! | `scope.name`, `scope.version`, `scope.attributes.<key>` | the instrumentation library |
//! | `span.name`, `span.trace_state`, `span.status.message`, `span.attributes.<key>` | a span |
//! | `event.name`, `event.attributes.<key>` | a span's event |
//! | `link.trace_state`, `link.attributes.<key>` | a span's link |
//! | `log.body`, `log.severity_text`, `log.event_name`, `log.attributes.<key>` | a log record |
//!
//! A value inside an attribute's list or map extends its path (`span.attributes.k.inner`),
//! and every attribute key is a name field (`span.attributes.<key>` again). A profile's
//! `prose_fields` name which of these are prose (the built-in `traces` profile: the GenAI
//! semantic conventions' prompts and completions, Langfuse's input, output and metadata).
//! Binary ids and numbers are not text and are not inspected; fields the schema does not
//! know are skipped, as the receiver skips them.

use serde_json::Value;

/// One string of an export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpField {
    pub path: String,
    /// `Some` for an attribute's key (a name), `None` for a value.
    pub key: Option<String>,
    pub value: Vec<u8>,
}

/// Which export a body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Traces,
    Logs,
}

impl Signal {
    /// The OTLP/HTTP signal of a request path (`/v1/traces`, `/api/public/otel/v1/traces`).
    pub fn of_path(path: &str) -> Option<Signal> {
        let path = path.trim_end_matches('/');
        if path.ends_with("/v1/traces") {
            Some(Signal::Traces)
        } else if path.ends_with("/v1/logs") {
            Some(Signal::Logs)
        } else {
            None
        }
    }
}

/// The export does not decode as its schema says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// Nesting of attribute values deeper than this is refused (and is no real export).
const MAX_DEPTH: usize = 32;

/// The fields of a protobuf export.
pub fn protobuf_fields(body: &[u8], signal: Signal) -> Result<Vec<OtlpField>, Malformed> {
    let mut out = Vec::new();
    for field in Wire::new(body) {
        if let (1, Item::Bytes(resource)) = field? {
            resource_pb(resource, signal, &mut out)?;
        }
    }
    Ok(out)
}

/// The fields of a JSON export (OTLP/JSON: lowerCamelCase names; snake_case accepted).
pub fn json_fields(body: &[u8], signal: Signal) -> Result<Vec<OtlpField>, Malformed> {
    let doc: Value = serde_json::from_slice(body).map_err(|_| Malformed)?;
    let mut out = Vec::new();
    let (outer, inner, records) = match signal {
        Signal::Traces => (
            ("resourceSpans", "resource_spans"),
            ("scopeSpans", "scope_spans"),
            ("spans", "spans"),
        ),
        Signal::Logs => (
            ("resourceLogs", "resource_logs"),
            ("scopeLogs", "scope_logs"),
            ("logRecords", "log_records"),
        ),
    };
    for resource in list(&doc, outer)? {
        if let Some(r) = get(resource, ("resource", "resource")) {
            attributes_json(r, "resource", &mut out)?;
        }
        string_json(
            resource,
            ("schemaUrl", "schema_url"),
            "resource.schema_url",
            &mut out,
        );
        for scope in list(resource, inner)? {
            if let Some(s) = get(scope, ("scope", "scope")) {
                string_json(s, ("name", "name"), "scope.name", &mut out);
                string_json(s, ("version", "version"), "scope.version", &mut out);
                attributes_json(s, "scope", &mut out)?;
            }
            for record in list(scope, records)? {
                match signal {
                    Signal::Traces => span_json(record, &mut out)?,
                    Signal::Logs => {
                        string_json(
                            record,
                            ("severityText", "severity_text"),
                            "log.severity_text",
                            &mut out,
                        );
                        string_json(
                            record,
                            ("eventName", "event_name"),
                            "log.event_name",
                            &mut out,
                        );
                        if let Some(body) = get(record, ("body", "body")) {
                            any_json(body, "log.body".into(), &mut out, 0)?;
                        }
                        attributes_json(record, "log", &mut out)?;
                    }
                }
            }
        }
    }
    Ok(out)
}

fn span_json(span: &Value, out: &mut Vec<OtlpField>) -> Result<(), Malformed> {
    string_json(span, ("name", "name"), "span.name", out);
    string_json(span, ("traceState", "trace_state"), "span.trace_state", out);
    if let Some(status) = get(span, ("status", "status")) {
        string_json(status, ("message", "message"), "span.status.message", out);
    }
    attributes_json(span, "span", out)?;
    for event in list(span, ("events", "events"))? {
        string_json(event, ("name", "name"), "event.name", out);
        attributes_json(event, "event", out)?;
    }
    for link in list(span, ("links", "links"))? {
        string_json(link, ("traceState", "trace_state"), "link.trace_state", out);
        attributes_json(link, "link", out)?;
    }
    Ok(())
}

fn get<'v>(v: &'v Value, (camel, snake): (&str, &str)) -> Option<&'v Value> {
    v.get(camel)
        .or_else(|| v.get(snake))
        .filter(|v| !v.is_null())
}

/// An array member (absent is empty; anything else is malformed).
fn list<'v>(v: &'v Value, names: (&str, &str)) -> Result<&'v [Value], Malformed> {
    match get(v, names) {
        None => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(_) => Err(Malformed),
    }
}

fn string_json(v: &Value, names: (&str, &str), path: &str, out: &mut Vec<OtlpField>) {
    if let Some(Value::String(s)) = get(v, names) {
        push(out, path.to_string(), None, s.as_bytes());
    }
}

fn attributes_json(owner: &Value, prefix: &str, out: &mut Vec<OtlpField>) -> Result<(), Malformed> {
    for kv in list(owner, ("attributes", "attributes"))? {
        key_value_json(kv, &format!("{prefix}.attributes"), out, 0)?;
    }
    Ok(())
}

fn key_value_json(
    kv: &Value,
    prefix: &str,
    out: &mut Vec<OtlpField>,
    depth: usize,
) -> Result<(), Malformed> {
    let key = match kv.get("key") {
        Some(Value::String(k)) => k.as_str(),
        None => "",
        Some(_) => return Err(Malformed),
    };
    let path = format!("{prefix}.{key}");
    push(out, path.clone(), Some(key), key.as_bytes());
    if let Some(value) = get(kv, ("value", "value")) {
        any_json(value, path, out, depth + 1)?;
    }
    Ok(())
}

fn any_json(
    v: &Value,
    path: String,
    out: &mut Vec<OtlpField>,
    depth: usize,
) -> Result<(), Malformed> {
    if depth > MAX_DEPTH {
        return Err(Malformed);
    }
    if let Some(Value::String(s)) = get(v, ("stringValue", "string_value")) {
        push(out, path.clone(), None, s.as_bytes());
    }
    // bytesValue is base64 in OTLP/JSON: opaque, like the protobuf's bytes.
    if let Some(array) = get(v, ("arrayValue", "array_value")) {
        for item in list(array, ("values", "values"))? {
            any_json(item, path.clone(), out, depth + 1)?;
        }
    }
    if let Some(map) = get(v, ("kvlistValue", "kvlist_value")) {
        for kv in list(map, ("values", "values"))? {
            key_value_json(kv, &path, out, depth + 1)?;
        }
    }
    Ok(())
}

fn push(out: &mut Vec<OtlpField>, path: String, key: Option<&str>, value: &[u8]) {
    out.push(OtlpField {
        path,
        key: key.map(str::to_string),
        value: value.to_vec(),
    });
}

// ---- protobuf ----

/// A field's payload, as the wire format carries it.
enum Item<'a> {
    Varint,
    Fixed,
    Bytes(&'a [u8]),
}

/// The fields of one protobuf message, in order; a truncated or impossible encoding ends
/// the walk with [`Malformed`].
struct Wire<'a> {
    rest: &'a [u8],
    failed: bool,
}

impl<'a> Wire<'a> {
    fn new(message: &'a [u8]) -> Self {
        Wire {
            rest: message,
            failed: false,
        }
    }

    fn varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for i in 0..10 {
            let (&b, rest) = self.rest.split_first()?;
            self.rest = rest;
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.rest.len() {
            return None;
        }
        let (taken, rest) = self.rest.split_at(n);
        self.rest = rest;
        Some(taken)
    }

    fn field(&mut self) -> Option<(u64, Item<'a>)> {
        let tag = self.varint()?;
        let number = tag >> 3;
        if number == 0 {
            return None;
        }
        let item = match tag & 7 {
            0 => self.varint().map(|_| Item::Varint)?,
            1 => self.take(8).map(|_| Item::Fixed)?,
            2 => {
                let len = usize::try_from(self.varint()?).ok()?;
                Item::Bytes(self.take(len)?)
            }
            5 => self.take(4).map(|_| Item::Fixed)?,
            // Groups (3, 4) are not in OTLP's schema; 6 and 7 are not wire types.
            _ => return None,
        };
        Some((number, item))
    }
}

impl<'a> Iterator for Wire<'a> {
    type Item = Result<(u64, Item<'a>), Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() || self.failed {
            return None;
        }
        let field = self.field();
        if field.is_none() {
            self.failed = true;
        }
        Some(field.ok_or(Malformed))
    }
}

/// The length-delimited payloads of a message's fields, by field number.
fn each_bytes<'a>(
    message: &'a [u8],
    mut f: impl FnMut(u64, &'a [u8]) -> Result<(), Malformed>,
) -> Result<(), Malformed> {
    for field in Wire::new(message) {
        if let (number, Item::Bytes(b)) = field? {
            f(number, b)?;
        }
    }
    Ok(())
}

fn string_pb(out: &mut Vec<OtlpField>, path: &str, bytes: &[u8]) -> Result<(), Malformed> {
    // A protobuf `string` is UTF-8 by definition; anything else is not this schema.
    std::str::from_utf8(bytes).map_err(|_| Malformed)?;
    push(out, path.to_string(), None, bytes);
    Ok(())
}

fn resource_pb(message: &[u8], signal: Signal, out: &mut Vec<OtlpField>) -> Result<(), Malformed> {
    each_bytes(message, |number, b| match number {
        1 => each_bytes(b, |n, kv| match n {
            1 => key_value_pb(kv, "resource.attributes", out, 0),
            _ => Ok(()),
        }),
        2 => scope_pb(b, signal, out),
        3 => string_pb(out, "resource.schema_url", b),
        _ => Ok(()),
    })
}

fn scope_pb(message: &[u8], signal: Signal, out: &mut Vec<OtlpField>) -> Result<(), Malformed> {
    each_bytes(message, |number, b| match number {
        1 => each_bytes(b, |n, v| match n {
            1 => string_pb(out, "scope.name", v),
            2 => string_pb(out, "scope.version", v),
            3 => key_value_pb(v, "scope.attributes", out, 0),
            _ => Ok(()),
        }),
        2 => match signal {
            Signal::Traces => span_pb(b, out),
            Signal::Logs => log_pb(b, out),
        },
        3 => string_pb(out, "scope.schema_url", b),
        _ => Ok(()),
    })
}

fn span_pb(message: &[u8], out: &mut Vec<OtlpField>) -> Result<(), Malformed> {
    // 1, 2, 4: binary ids; 7, 8: times; 6, 10, 12, 14, 16: numbers.
    each_bytes(message, |number, b| match number {
        3 => string_pb(out, "span.trace_state", b),
        5 => string_pb(out, "span.name", b),
        9 => key_value_pb(b, "span.attributes", out, 0),
        11 => each_bytes(b, |n, v| match n {
            2 => string_pb(out, "event.name", v),
            3 => key_value_pb(v, "event.attributes", out, 0),
            _ => Ok(()),
        }),
        13 => each_bytes(b, |n, v| match n {
            3 => string_pb(out, "link.trace_state", v),
            4 => key_value_pb(v, "link.attributes", out, 0),
            _ => Ok(()),
        }),
        15 => each_bytes(b, |n, v| match n {
            2 => string_pb(out, "span.status.message", v),
            _ => Ok(()),
        }),
        _ => Ok(()),
    })
}

fn log_pb(message: &[u8], out: &mut Vec<OtlpField>) -> Result<(), Malformed> {
    // 9, 10: binary ids; 1, 11: times; 2, 7, 8: numbers.
    each_bytes(message, |number, b| match number {
        3 => string_pb(out, "log.severity_text", b),
        5 => any_pb(b, "log.body", out, 0),
        6 => key_value_pb(b, "log.attributes", out, 0),
        12 => string_pb(out, "log.event_name", b),
        _ => Ok(()),
    })
}

fn key_value_pb(
    message: &[u8],
    prefix: &str,
    out: &mut Vec<OtlpField>,
    depth: usize,
) -> Result<(), Malformed> {
    let mut key: &[u8] = b"";
    let mut value: Option<&[u8]> = None;
    each_bytes(message, |number, b| {
        match number {
            1 => key = b,
            2 => value = Some(b),
            _ => {}
        }
        Ok(())
    })?;
    let key = std::str::from_utf8(key).map_err(|_| Malformed)?;
    let path = format!("{prefix}.{key}");
    push(out, path.clone(), Some(key), key.as_bytes());
    match value {
        Some(v) => any_pb(v, &path, out, depth + 1),
        None => Ok(()),
    }
}

fn any_pb(
    message: &[u8],
    path: &str,
    out: &mut Vec<OtlpField>,
    depth: usize,
) -> Result<(), Malformed> {
    if depth > MAX_DEPTH {
        return Err(Malformed);
    }
    // 7: bytes_value, opaque; 2, 3, 4, 8: numbers.
    each_bytes(message, |number, b| match number {
        1 => string_pb(out, path, b),
        5 => each_bytes(b, |n, v| match n {
            1 => any_pb(v, path, out, depth + 1),
            _ => Ok(()),
        }),
        6 => each_bytes(b, |n, v| match n {
            1 => key_value_pb(v, path, out, depth + 1),
            _ => Ok(()),
        }),
        _ => Ok(()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A protobuf field: tag and payload.
    fn pb(number: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let varint = |mut v: u64, out: &mut Vec<u8>| loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                break;
            }
            out.push(b | 0x80);
        };
        varint(number << 3 | 2, &mut out);
        varint(payload.len() as u64, &mut out);
        out.extend_from_slice(payload);
        out
    }

    fn attr(key: &str, value: &str) -> Vec<u8> {
        [pb(1, key.as_bytes()), pb(2, &pb(1, value.as_bytes()))].concat()
    }

    /// An export of one span named `name` with `attrs`, from a service.
    fn export(name: &str, attrs: &[(&str, &str)]) -> Vec<u8> {
        let mut span = [
            pb(1, &[0xde; 16]),
            pb(2, &[0x0a; 8]),
            pb(5, name.as_bytes()),
        ]
        .concat();
        for (k, v) in attrs {
            span.extend(pb(9, &attr(k, v)));
        }
        // A fixed64 start time and a varint kind, which are skipped.
        span.extend([0x39, 1, 2, 3, 4, 5, 6, 7, 8, 0x30, 2]);
        let resource = pb(1, &pb(1, &attr("service.name", "litellm")));
        let scope = [pb(1, &pb(1, b"langfuse-sdk")), pb(2, &span)].concat();
        pb(1, &[resource, pb(2, &scope)].concat())
    }

    fn paths(fields: &[OtlpField]) -> Vec<(String, Option<String>, String)> {
        fields
            .iter()
            .map(|f| {
                (
                    f.path.clone(),
                    f.key.clone(),
                    String::from_utf8_lossy(&f.value).into_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn a_protobuf_span_is_read_into_named_fields() {
        let body = export(
            "chat",
            &[
                ("langfuse.observation.input", "print('\\n')"),
                ("gen_ai.request.model", "gpt-4o"),
            ],
        );
        let got = paths(&protobuf_fields(&body, Signal::Traces).expect("decodes"));
        let want = [
            (
                "resource.attributes.service.name",
                Some("service.name"),
                "service.name",
            ),
            ("resource.attributes.service.name", None, "litellm"),
            ("scope.name", None, "langfuse-sdk"),
            ("span.name", None, "chat"),
            (
                "span.attributes.langfuse.observation.input",
                Some("langfuse.observation.input"),
                "langfuse.observation.input",
            ),
            (
                "span.attributes.langfuse.observation.input",
                None,
                "print('\\n')",
            ),
            (
                "span.attributes.gen_ai.request.model",
                Some("gen_ai.request.model"),
                "gen_ai.request.model",
            ),
            ("span.attributes.gen_ai.request.model", None, "gpt-4o"),
        ];
        let want: Vec<_> = want
            .iter()
            .map(|(p, k, v)| (p.to_string(), k.map(str::to_string), v.to_string()))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn truncated_or_impossible_protobuf_is_malformed() {
        let body = export("chat", &[("k", "v")]);
        for cut in [1, 2, body.len() / 2, body.len() - 1] {
            assert_eq!(
                protobuf_fields(&body[..cut], Signal::Traces),
                Err(Malformed),
                "cut at {cut}"
            );
        }
        // A group wire type, a zero field number, a length past the end, invalid UTF-8.
        for bad in [
            vec![0x0b, 0x0c],
            vec![0x02, 0x00],
            vec![0x0a, 0xff, 0x01],
            export("\u{0}", &[])
                .iter()
                .map(|&b| if b == 0 { 0xff } else { b })
                .collect(),
        ] {
            assert_eq!(
                protobuf_fields(&bad, Signal::Traces),
                Err(Malformed),
                "{bad:?}"
            );
        }
        assert_eq!(protobuf_fields(b"", Signal::Traces), Ok(Vec::new()));
    }

    #[test]
    fn nested_values_extend_the_path_and_depth_is_bounded() {
        let inner = pb(6, &pb(1, &attr("role", "user")));
        let kv = [
            pb(1, b"gen_ai.input.messages"),
            pb(2, &pb(5, &pb(1, &inner))),
        ]
        .concat();
        let span = [pb(5, b"s"), pb(9, &kv)].concat();
        let body = pb(1, &pb(2, &pb(2, &span)));
        let got = paths(&protobuf_fields(&body, Signal::Traces).expect("decodes"));
        assert!(
            got.contains(&(
                "span.attributes.gen_ai.input.messages.role".into(),
                None,
                "user".into()
            )),
            "{got:?}"
        );

        let mut value = pb(1, b"deep");
        for _ in 0..40 {
            value = pb(5, &pb(1, &value));
        }
        let kv = [pb(1, b"k"), pb(2, &value)].concat();
        let body = pb(1, &pb(2, &pb(2, &pb(9, &kv))));
        assert_eq!(protobuf_fields(&body, Signal::Traces), Err(Malformed));
    }

    #[test]
    fn json_exports_read_like_protobuf_ones() {
        let body = br#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"litellm"}}]},
            "scopeSpans":[{"scope":{"name":"langfuse-sdk"},"spans":[{"traceId":"3q3e","name":"chat",
            "attributes":[{"key":"langfuse.observation.input","value":{"stringValue":"print('\\n')"}},
                          {"key":"gen_ai.request.model","value":{"stringValue":"gpt-4o"}}]}]}]}]}"#;
        let from_json = json_fields(body, Signal::Traces).expect("decodes");
        let from_pb = protobuf_fields(
            &export(
                "chat",
                &[
                    ("langfuse.observation.input", "print('\\n')"),
                    ("gen_ai.request.model", "gpt-4o"),
                ],
            ),
            Signal::Traces,
        )
        .expect("decodes");
        assert_eq!(paths(&from_json), paths(&from_pb));
        assert_eq!(
            json_fields(b"{\"resourceSpans\":{}}", Signal::Traces),
            Err(Malformed)
        );
        assert_eq!(
            json_fields(b"{\"resourceSpans\":[", Signal::Traces),
            Err(Malformed)
        );
    }

    #[test]
    fn log_records_have_bodies() {
        let record = [
            pb(3, b"INFO"),
            pb(5, &pb(1, b"user said hi")),
            pb(6, &attr("event.name", "gen_ai.user.message")),
        ]
        .concat();
        let body = pb(1, &pb(2, &pb(2, &record)));
        let got = paths(&protobuf_fields(&body, Signal::Logs).expect("decodes"));
        assert!(
            got.contains(&("log.body".into(), None, "user said hi".into())),
            "{got:?}"
        );
        assert_eq!(
            Signal::of_path("/api/public/otel/v1/traces"),
            Some(Signal::Traces)
        );
        assert_eq!(Signal::of_path("/v1/logs/"), Some(Signal::Logs));
        assert_eq!(Signal::of_path("/v1/metrics"), None);
    }
}
