//! AWS Bedrock behind the OpenAI-compatible routes: an OpenAI chat completion request
//! becomes a Bedrock Converse request, and Bedrock's answer becomes OpenAI's, whole or as a
//! stream (Bedrock streams in AWS's binary event-stream framing, which is read here and
//! written out as server-sent events of `chat.completion.chunk`s).
//!
//! Text conversations only: a request with tools, or with content parts other than text, is
//! refused with a message saying so, rather than sent on with parts silently dropped.
//! Pure data: signing and sending are the proxy's.

use serde_json::{json, Map, Value};

/// Why a request cannot go to Bedrock (an OpenAI `invalid_request_error`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    #[error("the request body is not a JSON object")]
    NotJson,
    #[error("`messages` must be a non-empty array")]
    NoMessages,
    #[error("message {0}: only the roles system, developer, user and assistant are translated for Bedrock")]
    Role(usize),
    #[error("message {0}: only text content is translated for Bedrock")]
    Content(usize),
    #[error("`{0}` is not translated for Bedrock targets")]
    Unsupported(&'static str),
}

/// Fields that change what the model may do and cannot be translated: refused, not dropped.
const UNTRANSLATED: [&str; 4] = ["tools", "functions", "tool_choice", "response_format"];

/// The Converse request for an OpenAI chat completion request `body`.
pub fn converse_request(body: &[u8]) -> Result<Vec<u8>, TranslateError> {
    let request: Map<String, Value> =
        serde_json::from_slice(body).map_err(|_| TranslateError::NotJson)?;
    if let Some(field) = UNTRANSLATED
        .into_iter()
        .find(|f| request.get(*f).is_some_and(|v| !v.is_null()))
    {
        return Err(TranslateError::Unsupported(field));
    }
    let messages = request
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
        .ok_or(TranslateError::NoMessages)?;
    let mut system = Vec::new();
    let mut turns: Vec<(String, Vec<Value>)> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let role = message.get("role").and_then(Value::as_str).unwrap_or("");
        let texts = texts(message.get("content")).ok_or(TranslateError::Content(i))?;
        let blocks = texts.into_iter().map(|t| json!({ "text": t }));
        match role {
            "system" | "developer" => system.extend(blocks),
            "user" | "assistant" => match turns.last_mut() {
                // Converse wants the roles to alternate: consecutive turns of one role join.
                Some((last, content)) if last == role => content.extend(blocks),
                _ => turns.push((role.to_string(), blocks.collect())),
            },
            _ => return Err(TranslateError::Role(i)),
        }
    }
    let mut converse = Map::new();
    converse.insert(
        "messages".into(),
        Value::Array(
            turns
                .into_iter()
                .map(|(role, content)| json!({ "role": role, "content": content }))
                .collect(),
        ),
    );
    if !system.is_empty() {
        converse.insert("system".into(), Value::Array(system));
    }
    let mut inference = Map::new();
    let max_tokens = request
        .get("max_completion_tokens")
        .or_else(|| request.get("max_tokens"));
    for (to, value) in [
        ("maxTokens", max_tokens),
        ("temperature", request.get("temperature")),
        ("topP", request.get("top_p")),
    ] {
        if let Some(v) = value.filter(|v| v.is_number()) {
            inference.insert(to.into(), v.clone());
        }
    }
    match request.get("stop") {
        Some(Value::String(s)) => {
            inference.insert("stopSequences".into(), json!([s]));
        }
        Some(Value::Array(a)) if !a.is_empty() => {
            inference.insert("stopSequences".into(), Value::Array(a.clone()));
        }
        _ => {}
    }
    if !inference.is_empty() {
        converse.insert("inferenceConfig".into(), Value::Object(inference));
    }
    serde_json::to_vec(&converse).map_err(|_| TranslateError::NotJson)
}

/// The texts of a message's content: a string, or an array of `{"type": "text"}` parts.
fn texts(content: Option<&Value>) -> Option<Vec<String>> {
    match content? {
        Value::String(s) => Some(vec![s.clone()]),
        Value::Array(parts) => parts
            .iter()
            .map(
                |p| match (p.get("type")?.as_str()?, p.get("text")?.as_str()) {
                    ("text", Some(t)) => Some(t.to_string()),
                    _ => None,
                },
            )
            .collect(),
        _ => None,
    }
}

/// OpenAI's `finish_reason` for Bedrock's `stopReason`.
fn finish_reason(stop: Option<&str>) -> &'static str {
    match stop {
        Some("max_tokens") => "length",
        Some("content_filtered" | "guardrail_intervened") => "content_filter",
        Some("tool_use") => "tool_calls",
        _ => "stop",
    }
}

fn openai_usage(usage: &Value) -> Value {
    let prompt = usage
        .get("inputTokens")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let completion = usage
        .get("outputTokens")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    json!({ "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion })
}

/// The chat completion for a whole Converse answer; `None` when it is not one.
pub fn chat_completion(converse: &[u8], model: &str, id: &str, created: u64) -> Option<Vec<u8>> {
    let answer: Value = serde_json::from_slice(converse).ok()?;
    let content = answer.pointer("/output/message/content")?.as_array()?;
    let text: String = content
        .iter()
        .filter_map(|b| b.get("text").and_then(Value::as_str))
        .collect();
    let stop = answer.get("stopReason").and_then(Value::as_str);
    let mut completion = json!({
        "id": id, "object": "chat.completion", "created": created, "model": model,
        "choices": [{ "index": 0, "message": { "role": "assistant", "content": text },
                      "finish_reason": finish_reason(stop) }],
    });
    if let Some(usage) = answer.get("usage") {
        completion["usage"] = openai_usage(usage);
    }
    serde_json::to_vec(&completion).ok()
}

/// An error answer of Bedrock (`{"message": ...}`, the kind in `x-amzn-errortype`) in
/// OpenAI's error shape.
pub fn openai_error(bedrock: &[u8], status: u16, kind: Option<&str>) -> Vec<u8> {
    let message = serde_json::from_slice::<Value>(bedrock)
        .ok()
        .and_then(|v| {
            v.get("message")
                .or_else(|| v.get("Message"))
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| format!("Bedrock answered {status}"));
    // `ThrottlingException:http://internal.amazon.com/...`: the name before the colon.
    let code = kind
        .and_then(|k| k.split(':').next())
        .filter(|k| !k.is_empty())
        .unwrap_or("bedrock_error");
    let kind = match status {
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        _ => "server_error",
    };
    crate::llm_request::openai_error(kind, code, &message)
        .to_string()
        .into_bytes()
}

/// A frame of AWS's event-stream encoding larger than this is refused (Bedrock's are small).
pub const MAX_FRAME: usize = 16 << 20;

/// A broken event stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("event-stream frame of {0} bytes")]
    Length(usize),
    #[error("event-stream frame with a bad checksum")]
    Checksum,
    #[error("event-stream frame with malformed headers")]
    Headers,
}

/// One message of an event stream: the headers that matter here, and the payload.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Frame {
    /// `:message-type`: `event`, `exception` or `error`.
    pub message_type: String,
    /// `:event-type`, or `:exception-type` / `:error-code` for the others.
    pub kind: String,
    pub payload: Vec<u8>,
}

/// Reads event-stream frames out of chunks cut anywhere: a 12-byte prelude (total length,
/// headers length, the prelude's CRC-32), headers, payload, and the message's CRC-32.
#[derive(Debug, Default)]
pub struct FrameReader {
    pending: Vec<u8>,
}

impl FrameReader {
    /// The frames `chunk` completes.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<Frame>, FrameError> {
        self.pending.extend_from_slice(chunk);
        let mut frames = Vec::new();
        let mut at = 0;
        while let Some(prelude) = self.pending.get(at..at + 12) {
            let total = be32(&prelude[0..4]) as usize;
            let headers = be32(&prelude[4..8]) as usize;
            if !(16..=MAX_FRAME).contains(&total) || headers > total - 16 {
                return Err(FrameError::Length(total));
            }
            if crc32fast::hash(&prelude[0..8]) != be32(&prelude[8..12]) {
                return Err(FrameError::Checksum);
            }
            let Some(message) = self.pending.get(at..at + total) else {
                break;
            };
            if crc32fast::hash(&message[..total - 4]) != be32(&message[total - 4..]) {
                return Err(FrameError::Checksum);
            }
            frames.push(frame(
                &message[12..12 + headers],
                &message[12 + headers..total - 4],
            )?);
            at += total;
        }
        self.pending.drain(..at);
        Ok(frames)
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn frame(mut headers: &[u8], payload: &[u8]) -> Result<Frame, FrameError> {
    let mut frame = Frame {
        payload: payload.to_vec(),
        ..Frame::default()
    };
    let take = |n: usize, from: &mut &[u8]| -> Result<Vec<u8>, FrameError> {
        let (head, rest) = from.split_at_checked(n).ok_or(FrameError::Headers)?;
        *from = rest;
        Ok(head.to_vec())
    };
    while !headers.is_empty() {
        let name_len = take(1, &mut headers)?[0] as usize;
        let name = take(name_len, &mut headers)?;
        let value_type = take(1, &mut headers)?[0];
        let value = match value_type {
            0 | 1 => Vec::new(),
            2 => take(1, &mut headers)?,
            3 => take(2, &mut headers)?,
            4 => take(4, &mut headers)?,
            5 | 8 => take(8, &mut headers)?,
            6 | 7 => {
                let len = take(2, &mut headers)?;
                take(
                    usize::from(u16::from_be_bytes([len[0], len[1]])),
                    &mut headers,
                )?
            }
            9 => take(16, &mut headers)?,
            _ => return Err(FrameError::Headers),
        };
        let text = || String::from_utf8_lossy(&value).into_owned();
        match name.as_slice() {
            b":message-type" => frame.message_type = text(),
            b":event-type" | b":exception-type" | b":error-code" => frame.kind = text(),
            _ => {}
        }
    }
    Ok(frame)
}

/// An event-stream frame as Bedrock sends it (`:message-type`, its kind, `:content-type` and
/// the payload, both checksums): what [`FrameReader`] reads, for tests, fakes and fuzzing.
/// The format bounds a header value to 65,535 bytes and a frame to 4 GiB; callers stay
/// within them (the lengths are written as the format's u16 and u32).
pub fn encode_frame(message_type: &str, kind: &str, payload: &[u8]) -> Vec<u8> {
    let kind_header = if message_type == "event" {
        ":event-type"
    } else {
        ":exception-type"
    };
    let mut headers = Vec::new();
    for (name, value) in [
        (":message-type", message_type),
        (kind_header, kind),
        (":content-type", "application/json"),
    ] {
        headers.push(name.len() as u8);
        headers.extend_from_slice(name.as_bytes());
        headers.push(7);
        headers.extend_from_slice(&(value.len() as u16).to_be_bytes());
        headers.extend_from_slice(value.as_bytes());
    }
    let total = 12 + headers.len() + payload.len() + 4;
    let mut frame = Vec::new();
    frame.extend_from_slice(&(total as u32).to_be_bytes());
    frame.extend_from_slice(&(headers.len() as u32).to_be_bytes());
    let prelude_crc = crc32fast::hash(&frame);
    frame.extend_from_slice(&prelude_crc.to_be_bytes());
    frame.extend_from_slice(&headers);
    frame.extend_from_slice(payload);
    let crc = crc32fast::hash(&frame);
    frame.extend_from_slice(&crc.to_be_bytes());
    frame
}

/// Turns ConverseStream's frames into OpenAI's server-sent `chat.completion.chunk`s, the
/// usage in a last chunk of its own (as `stream_options.include_usage` asks) and `[DONE]`.
#[derive(Debug)]
pub struct StreamTranslator {
    frames: FrameReader,
    model: String,
    id: String,
    created: u64,
    finish: Option<&'static str>,
    done: bool,
}

impl StreamTranslator {
    pub fn new(model: &str, id: &str, created: u64) -> Self {
        StreamTranslator {
            frames: FrameReader::default(),
            model: model.to_string(),
            id: id.to_string(),
            created,
            finish: None,
            done: false,
        }
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> String {
        let chunk = json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model,
            "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }],
        });
        format!("data: {chunk}\n\n")
    }

    /// The server-sent events the frames completed by `chunk` make (maybe none). A broken
    /// frame is an error: the stream cannot be read on.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<u8>, FrameError> {
        let mut out = String::new();
        for frame in self.frames.feed(chunk)? {
            if self.done {
                break;
            }
            let payload: Value = serde_json::from_slice(&frame.payload).unwrap_or(Value::Null);
            if frame.message_type != "event" {
                // An exception mid-stream (throttling, a validation or model error).
                let message = payload
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("Bedrock ended the stream with an error");
                let error = crate::llm_request::openai_error("server_error", &frame.kind, message);
                out.push_str(&format!("data: {error}\n\n"));
                self.done = true;
                continue;
            }
            match frame.kind.as_str() {
                "messageStart" => {
                    out.push_str(&self.chunk(json!({ "role": "assistant", "content": "" }), None))
                }
                "contentBlockDelta" => {
                    if let Some(text) = payload.pointer("/delta/text").and_then(Value::as_str) {
                        out.push_str(&self.chunk(json!({ "content": text }), None));
                    }
                }
                "messageStop" => {
                    let stop = payload.get("stopReason").and_then(Value::as_str);
                    self.finish = Some(finish_reason(stop));
                    out.push_str(&self.chunk(json!({}), self.finish));
                }
                "metadata" => {
                    if let Some(usage) = payload.get("usage") {
                        let last = json!({
                            "id": self.id, "object": "chat.completion.chunk",
                            "created": self.created, "model": self.model,
                            "choices": [], "usage": openai_usage(usage),
                        });
                        out.push_str(&format!("data: {last}\n\n"));
                    }
                    out.push_str("data: [DONE]\n\n");
                    self.done = true;
                }
                _ => {}
            }
        }
        Ok(out.into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conversation() -> Vec<u8> {
        let mut stream = Vec::new();
        for (kind, payload) in [
            ("messageStart", r#"{"role":"assistant"}"#),
            (
                "contentBlockDelta",
                r#"{"contentBlockIndex":0,"delta":{"text":"Hel"}}"#,
            ),
            (
                "contentBlockDelta",
                r#"{"contentBlockIndex":0,"delta":{"text":"lo"}}"#,
            ),
            ("contentBlockStop", r#"{"contentBlockIndex":0}"#),
            ("messageStop", r#"{"stopReason":"max_tokens"}"#),
            (
                "metadata",
                r#"{"usage":{"inputTokens":12,"outputTokens":2,"totalTokens":14},"metrics":{"latencyMs":40}}"#,
            ),
        ] {
            stream.extend(encode_frame("event", kind, payload.as_bytes()));
        }
        stream
    }

    #[test]
    fn a_chat_request_becomes_a_converse_request() {
        let body =
            br#"{"model":"claude","stream":true,"max_tokens":64,"temperature":0.2,"stop":"END",
            "messages":[{"role":"system","content":"Be brief."},
                        {"role":"user","content":"Hi"},
                        {"role":"user","content":[{"type":"text","text":"there"}]},
                        {"role":"assistant","content":"Hello"},
                        {"role":"user","content":"Bye"}]}"#;
        let converse: Value =
            serde_json::from_slice(&converse_request(body).expect("translates")).expect("json");
        assert_eq!(converse["system"], json!([{ "text": "Be brief." }]));
        assert_eq!(
            converse["messages"],
            json!([
                { "role": "user", "content": [{ "text": "Hi" }, { "text": "there" }] },
                { "role": "assistant", "content": [{ "text": "Hello" }] },
                { "role": "user", "content": [{ "text": "Bye" }] },
            ])
        );
        assert_eq!(
            converse["inferenceConfig"],
            json!({ "maxTokens": 64, "temperature": 0.2, "stopSequences": ["END"] })
        );
        assert!(converse.get("model").is_none() && converse.get("stream").is_none());
    }

    #[test]
    fn what_cannot_be_translated_is_refused_not_dropped() {
        let cases: [(&[u8], TranslateError); 6] = [
            (b"[1]", TranslateError::NotJson),
            (br#"{"messages":[]}"#, TranslateError::NoMessages),
            (
                br#"{"messages":[{"role":"user","content":"x"}],"tools":[{"type":"function"}]}"#,
                TranslateError::Unsupported("tools"),
            ),
            (
                br#"{"messages":[{"role":"tool","content":"x"}]}"#,
                TranslateError::Role(0),
            ),
            (
                br#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}"#,
                TranslateError::Content(0),
            ),
            (
                br#"{"messages":[{"role":"user","content":7}]}"#,
                TranslateError::Content(0),
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(converse_request(body), Err(expected));
        }
    }

    #[test]
    fn a_whole_answer_becomes_a_chat_completion() {
        let answer = br#"{"output":{"message":{"role":"assistant","content":[{"text":"Hello"},{"text":" there"}]}},
            "stopReason":"end_turn","usage":{"inputTokens":9,"outputTokens":3,"totalTokens":12}}"#;
        let completion: Value = serde_json::from_slice(
            &chat_completion(answer, "claude", "chatcmpl-1", 7).expect("an answer"),
        )
        .expect("json");
        assert_eq!(
            completion["choices"][0]["message"]["content"],
            "Hello there"
        );
        assert_eq!(completion["choices"][0]["finish_reason"], "stop");
        assert_eq!(completion["usage"]["total_tokens"], 12);
        assert_eq!(completion["model"], "claude");
        assert_eq!(chat_completion(b"{}", "m", "i", 0), None);
    }

    #[test]
    fn a_stream_becomes_chunks_whatever_the_cuts() {
        let stream = conversation();
        for size in [1, 2, 5, 13, 64, stream.len()] {
            let mut t = StreamTranslator::new("claude", "chatcmpl-1", 7);
            let mut out = Vec::new();
            for chunk in stream.chunks(size) {
                out.extend(t.feed(chunk).expect("well formed"));
            }
            let text = String::from_utf8(out).expect("utf-8");
            let events: Vec<Value> = text
                .split("\n\n")
                .filter_map(|e| e.strip_prefix("data: "))
                .filter(|d| *d != "[DONE]")
                .map(|d| serde_json::from_str(d).expect("json"))
                .collect();
            let content: String = events
                .iter()
                .filter_map(|e| {
                    e.pointer("/choices/0/delta/content")
                        .and_then(Value::as_str)
                })
                .collect();
            assert_eq!(content, "Hello", "chunks of {size}");
            assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
            assert_eq!(events[3]["choices"][0]["finish_reason"], "length");
            assert_eq!(events[4]["usage"]["prompt_tokens"], 12);
            assert!(text.ends_with("data: [DONE]\n\n"));
        }
    }

    #[test]
    fn a_broken_stream_is_an_error_and_an_exception_ends_it() {
        let mut frame = encode_frame("event", "contentBlockDelta", br#"{"delta":{"text":"x"}}"#);
        let last = frame.len() - 1;
        frame[last] ^= 1;
        assert_eq!(
            FrameReader::default().feed(&frame),
            Err(FrameError::Checksum)
        );
        let mut prelude = encode_frame("event", "x", b"{}");
        prelude[11] ^= 1;
        assert_eq!(
            FrameReader::default().feed(&prelude),
            Err(FrameError::Checksum)
        );
        let huge = [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(matches!(
            FrameReader::default().feed(&huge),
            Err(FrameError::Length(_))
        ));
        let mut truncated = encode_frame("event", "messageStart", b"{}");
        truncated.truncate(20);
        assert_eq!(
            FrameReader::default().feed(&truncated),
            Ok(Vec::new()),
            "waits for more"
        );

        let mut t = StreamTranslator::new("m", "i", 0);
        let mut stream = encode_frame("event", "messageStart", br#"{"role":"assistant"}"#);
        stream.extend(encode_frame(
            "exception",
            "throttlingException",
            br#"{"message":"Too many requests"}"#,
        ));
        stream.extend(encode_frame(
            "event",
            "contentBlockDelta",
            br#"{"delta":{"text":"late"}}"#,
        ));
        let text = String::from_utf8(t.feed(&stream).expect("frames")).expect("utf-8");
        assert!(text.contains(r#""code":"throttlingException""#), "{text}");
        assert!(!text.contains("late"), "nothing after the exception");
    }

    #[test]
    fn errors_take_openais_shape() {
        let e: Value = serde_json::from_slice(&openai_error(
            br#"{"message":"Rate exceeded"}"#,
            429,
            Some("ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/"),
        ))
        .expect("json");
        assert_eq!(e["error"]["code"], "ThrottlingException");
        assert_eq!(e["error"]["type"], "rate_limit_error");
        assert_eq!(e["error"]["message"], "Rate exceeded");
        let e: Value = serde_json::from_slice(&openai_error(b"<html>", 502, None)).expect("json");
        assert_eq!(e["error"]["message"], "Bedrock answered 502");
    }
}
