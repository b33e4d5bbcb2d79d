//! What rampart reads from an OpenAI-style request body, and what it changes before the
//! body goes to a provider: the model name a target knows, and the usage report of a stream.
//!
//! The body is only peeked at (model and stream flags, everything else skipped) unless it
//! must change, so that a large prompt that travels unchanged is never rebuilt.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::{Map, Value};

/// An error in OpenAI's shape, which the OpenAI SDKs raise as their exceptions: the one
/// shape of every error rampart answers on OpenAI-style routes, whole or as a stream's last
/// event.
pub fn openai_error(kind: &str, code: &str, message: &str) -> Value {
    serde_json::json!({
        "error": { "message": message, "type": kind, "param": null, "code": code }
    })
}

/// A request body rampart cannot route.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("the request body is not a JSON object: {0}")]
    NotJson(String),
    #[error("the request body has no \"model\" string")]
    NoModel,
}

#[derive(Deserialize)]
struct Peek {
    model: Option<Value>,
    stream: Option<Value>,
    stream_options: Option<Value>,
}

/// An OpenAI-style request: the model asked for and whether the answer streams.
#[derive(Debug)]
pub struct LlmRequest<'a> {
    body: &'a [u8],
    pub model: String,
    pub stream: bool,
    /// The client asked for the stream's usage already.
    usage_asked: bool,
}

impl<'a> LlmRequest<'a> {
    pub fn parse(body: &'a [u8]) -> Result<Self, RequestError> {
        let peek: Peek =
            serde_json::from_slice(body).map_err(|e| RequestError::NotJson(e.to_string()))?;
        let Some(Value::String(model)) = peek.model else {
            return Err(RequestError::NoModel);
        };
        let usage_asked = peek
            .stream_options
            .as_ref()
            .and_then(|o| o.get("include_usage"))
            == Some(&Value::Bool(true));
        Ok(LlmRequest {
            body,
            model,
            stream: peek.stream == Some(Value::Bool(true)),
            usage_asked,
        })
    }

    /// The body for a target that knows the model as `model` (`None`: as asked). A
    /// streaming request also asks for `stream_options.include_usage`, so that the stream
    /// reports the tokens it used.
    pub fn body_for(&self, model: Option<&str>) -> Cow<'a, [u8]> {
        let rename = model.filter(|m| *m != self.model);
        let ask_usage = self.stream && !self.usage_asked;
        if rename.is_none() && !ask_usage {
            return Cow::Borrowed(self.body);
        }
        // `parse` showed this is a JSON object, so it parses again.
        let Ok(mut object) = serde_json::from_slice::<Map<String, Value>>(self.body) else {
            return Cow::Borrowed(self.body);
        };
        if let Some(model) = rename {
            object.insert("model".into(), Value::String(model.to_string()));
        }
        if ask_usage {
            let options = object
                .entry("stream_options")
                .or_insert_with(|| Value::Object(Map::new()));
            if !options.is_object() {
                *options = Value::Object(Map::new());
            }
            if let Value::Object(options) = options {
                options.insert("include_usage".into(), Value::Bool(true));
            }
        }
        serde_json::to_vec(&object).map_or(Cow::Borrowed(self.body), Cow::Owned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).expect("json")
    }

    #[test]
    fn the_model_is_read_wherever_it_is() {
        let body = br#"{"messages":[{"role":"user","content":"hi \"model\": \"x\""}],"model":"gpt-4o","stream":true}"#;
        let req = LlmRequest::parse(body).expect("parses");
        assert_eq!((req.model.as_str(), req.stream), ("gpt-4o", true));
        assert_eq!(
            LlmRequest::parse(br#"{"messages":[]}"#).err(),
            Some(RequestError::NoModel)
        );
        assert_eq!(
            LlmRequest::parse(br#"{"model": 4}"#).err(),
            Some(RequestError::NoModel)
        );
        assert!(matches!(
            LlmRequest::parse(b"not json"),
            Err(RequestError::NotJson(_))
        ));
        assert!(matches!(
            LlmRequest::parse(b"[1]"),
            Err(RequestError::NotJson(_))
        ));
    }

    #[test]
    fn an_unchanged_body_is_not_rebuilt() {
        let body = br#"{"model":"gpt-4o",  "messages":[]}"#;
        let req = LlmRequest::parse(body).expect("parses");
        assert!(matches!(req.body_for(None), Cow::Borrowed(b) if b == body));
        assert!(matches!(req.body_for(Some("gpt-4o")), Cow::Borrowed(_)));
        let asked = br#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#;
        let req = LlmRequest::parse(asked).expect("parses");
        assert!(matches!(req.body_for(None), Cow::Borrowed(_)));
    }

    #[test]
    fn streams_ask_for_usage_and_targets_get_their_model_name() {
        let body = br#"{"model":"fast","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
        let req = LlmRequest::parse(body).expect("parses");
        let out = json(&req.body_for(Some("gpt-4o-mini")));
        assert_eq!(out["model"], "gpt-4o-mini");
        assert_eq!(out["stream_options"]["include_usage"], true);
        assert_eq!(out["messages"][0]["content"], "hi");

        let odd = br#"{"model":"m","stream":true,"stream_options":3}"#;
        let out = json(&LlmRequest::parse(odd).expect("parses").body_for(None));
        assert_eq!(out["stream_options"]["include_usage"], true);

        let not_streaming = br#"{"model":"m","stream":false}"#;
        let req = LlmRequest::parse(not_streaming).expect("parses");
        assert!(json(&req.body_for(Some("n")))
            .get("stream_options")
            .is_none());
    }
}
