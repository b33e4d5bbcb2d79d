//! Token usage of LLM answers, read as they pass without holding them back.
//!
//! An OpenAI-style JSON answer carries `usage` at the top level; a streamed one (server-sent
//! events) carries it in its last `data:` event when the request asked for
//! `stream_options.include_usage`, which `LlmRequest::body_for` adds. The native APIs of
//! the native routes say it their own way: Anthropic's `usage` (`input_tokens`, and in a
//! stream `message_start`'s `message.usage` then running totals in `message_delta`), and
//! Gemini's `usageMetadata` (running totals in every chunk). Counts only grow within one
//! answer, so the largest seen of each is the answer's.

use serde::Deserialize;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct Usage {
    #[serde(
        default,
        alias = "input_tokens",
        alias = "promptTokenCount",
        alias = "inputTokens"
    )]
    pub prompt_tokens: u64,
    #[serde(
        default,
        alias = "output_tokens",
        alias = "candidatesTokenCount",
        alias = "outputTokens"
    )]
    pub completion_tokens: u64,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }

    fn max(self, other: Usage) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens.max(other.prompt_tokens),
            completion_tokens: self.completion_tokens.max(other.completion_tokens),
        }
    }
}

#[derive(Deserialize)]
struct WithUsage {
    usage: Option<Usage>,
    #[serde(rename = "usageMetadata")]
    usage_metadata: Option<Usage>,
    message: Option<Message>,
}

#[derive(Deserialize)]
struct Message {
    usage: Option<Usage>,
}

/// The usage of a whole JSON answer (or of one event of a stream).
pub fn usage_of_json(body: &[u8]) -> Option<Usage> {
    let w = serde_json::from_slice::<WithUsage>(body).ok()?;
    w.usage
        .or(w.usage_metadata)
        .or(w.message.and_then(|m| m.usage))
}

/// A longer SSE line is skipped, not buffered: usage events are small.
const MAX_LINE: usize = 1 << 20;

/// Reads the events of a streamed answer as its chunks pass.
#[derive(Debug, Default)]
pub struct SseUsage {
    /// The start of a line that the last chunk cut.
    partial: Vec<u8>,
    /// Skipping the rest of an over-long line.
    skipping: bool,
    usage: Option<Usage>,
    events: u64,
}

impl SseUsage {
    /// Reads one chunk; returns whether it held the stream's first `data:` event (the first
    /// token, for time-to-first-token).
    pub fn feed(&mut self, chunk: &[u8]) -> bool {
        let before = self.events;
        let mut rest = chunk;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            let (line, after) = (&rest[..end], &rest[end + 1..]);
            if self.skipping {
                self.skipping = false;
            } else if self.partial.is_empty() {
                self.line(line);
            } else {
                let mut whole = std::mem::take(&mut self.partial);
                whole.extend_from_slice(line);
                self.line(&whole);
            }
            rest = after;
        }
        if !self.skipping {
            if self.partial.len() + rest.len() > MAX_LINE {
                self.partial.clear();
                self.skipping = true;
            } else {
                self.partial.extend_from_slice(rest);
            }
        }
        before == 0 && self.events > 0
    }

    fn line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        let data = data.trim_ascii();
        if data == b"[DONE]" {
            return;
        }
        self.events += 1;
        // Only the event that carries usage is parsed; the others are passed over.
        if mentions_usage(data) {
            if let Some(u) = usage_of_json(data) {
                self.usage = Some(self.usage.map_or(u, |seen| seen.max(u)));
            }
        }
    }

    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// `data:` events seen, `[DONE]` aside.
    pub fn events(&self) -> u64 {
        self.events
    }
}

fn mentions_usage(data: &[u8]) -> bool {
    // `"usage"` and `"usageMetadata"`.
    data.windows(6).any(|w| w == b"\"usage")
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = "data: {\"id\":\"c1\",\"choices\":[{\"delta\":{\"content\":\"Hel\"}}],\"usage\":null}\n\n\
        data: {\"id\":\"c1\",\"choices\":[{\"delta\":{\"content\":\"lo\"}}],\"usage\":null}\n\n\
        data: {\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":2,\"total_tokens\":14}}\n\n\
        data: [DONE]\n\n";

    #[test]
    fn usage_is_found_whatever_the_chunking() {
        let bytes = STREAM.as_bytes();
        for size in [1, 2, 3, 7, 64, bytes.len()] {
            let mut sse = SseUsage::default();
            let firsts: Vec<bool> = bytes.chunks(size).map(|c| sse.feed(c)).collect();
            assert_eq!(
                sse.usage(),
                Some(Usage {
                    prompt_tokens: 12,
                    completion_tokens: 2
                }),
                "chunks of {size}"
            );
            assert_eq!(sse.events(), 3);
            assert_eq!(firsts.iter().filter(|&&f| f).count(), 1, "one first event");
        }
    }

    #[test]
    fn crlf_and_missing_usage() {
        let mut sse = SseUsage::default();
        sse.feed(b"event: x\r\ndata: {\"choices\":[]}\r\n\r\ndata: [DONE]\r\n\r\n");
        assert_eq!((sse.usage(), sse.events()), (None, 1));
    }

    #[test]
    fn an_overlong_line_is_skipped_not_held() {
        let mut sse = SseUsage::default();
        let huge = vec![b'a'; MAX_LINE + 10];
        sse.feed(b"data: ");
        sse.feed(&huge);
        assert!(sse.partial.is_empty());
        sse.feed(b"tail\ndata: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n");
        assert_eq!(sse.usage().map(|u| u.prompt_tokens), Some(1));
    }

    #[test]
    fn json_answers_carry_usage_at_the_top() {
        let body = br#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}"#;
        assert_eq!(
            usage_of_json(body),
            Some(Usage {
                prompt_tokens: 5,
                completion_tokens: 7
            })
        );
        assert_eq!(usage_of_json(b"{}"), None);
        let anthropic = br#"{"id":"msg_1","usage":{"input_tokens":9,"output_tokens":3}}"#;
        assert_eq!(usage_of_json(anthropic).map(|u| u.total()), Some(12));
        let gemini = br#"{"candidates":[],"usageMetadata":{"promptTokenCount":4,"candidatesTokenCount":6,"totalTokenCount":10}}"#;
        assert_eq!(usage_of_json(gemini).map(|u| u.total()), Some(10));
    }

    #[test]
    fn native_streams_report_running_totals() {
        let anthropic = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n\
            event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"Hi\"}}\n\n\
            event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\n\n";
        let mut sse = SseUsage::default();
        sse.feed(anthropic.as_bytes());
        assert_eq!(
            sse.usage(),
            Some(Usage {
                prompt_tokens: 25,
                completion_tokens: 15
            })
        );
        let gemini =
            "data: {\"usageMetadata\":{\"promptTokenCount\":4,\"candidatesTokenCount\":1}}\r\n\r\n\
            data: {\"usageMetadata\":{\"promptTokenCount\":4,\"candidatesTokenCount\":8}}\r\n\r\n";
        let mut sse = SseUsage::default();
        sse.feed(gemini.as_bytes());
        assert_eq!(sse.usage().map(|u| u.total()), Some(12));
    }
}
