//! Charging token budgets while an answer streams, and ending a stream that spent one.
//!
//! A call is admitted on an estimate of its prompt. While its answer streams, the running
//! total is the larger of what the provider has reported so far (Anthropic's and Gemini's
//! streams report as they go; OpenAI's only at the end) and the estimate plus one token per
//! event (a chat-completion chunk carries one token, rarely more). The running total is
//! settled with the budgets every [`SETTLE_EVERY`] or [`SETTLE_TOKENS`], whichever comes
//! first, so a stream overshoots a spent budget by about one settle's worth of tokens. The
//! provider's final usage then replaces the estimates.
//!
//! A stream found over budget ends at the next boundary between two server-sent events
//! with an error event in the shape the client's SDK raises: OpenAI's (`data:` with an
//! `error` object, which the OpenAI SDKs raise as `APIError`) or, on Anthropic's native
//! route, Anthropic's `event: error`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use rampart_plugins::llm_request::openai_error;
use rampart_plugins::llm_usage::Usage;
use rampart_plugins::models::ProviderKind;
use rampart_plugins::token_budget::Exhausted;

/// The longest a stream goes without settling its running total.
pub const SETTLE_EVERY: Duration = Duration::from_millis(100);
/// Tokens a stream runs up before it settles, however soon.
pub const SETTLE_TOKENS: u64 = 32;

/// A prompt's tokens, estimated from its body before the provider counts them: a sixth of
/// its bytes, below what tokenizers give for prose, code and JSON (three to four bytes a
/// token), so that an estimate rarely charges more than the truth it is replaced by.
pub fn prompt_estimate(body: &[u8]) -> u64 {
    body.len() as u64 / 6
}

/// How far a stream has come.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    /// `data:` events seen.
    pub events: u64,
    /// The usage the provider reported so far, if any.
    pub reported: Option<Usage>,
}

/// When a stream settles its running total.
pub struct Meter {
    on: bool,
    prompt: u64,
    settled_at: Instant,
}

impl Meter {
    /// A meter for a stream admitted on `prompt` tokens; `on` when budgets count the call.
    pub fn new(on: bool, prompt: u64) -> Self {
        Meter {
            on,
            prompt,
            settled_at: Instant::now(),
        }
    }

    /// Whether budgets count this stream (only then is it watched for event boundaries).
    pub fn on(&self) -> bool {
        self.on
    }

    /// The stream's running total, when the meter is on and the answer is a stream.
    pub fn running(&self, progress: Option<Progress>) -> Option<u64> {
        let progress = progress.filter(|_| self.on)?;
        let estimated = self.prompt.saturating_add(progress.events);
        let reported = progress.reported.map_or(0, |u| u.total());
        Some(estimated.max(reported))
    }

    /// The running total to settle now, if it is time: it grew past what is charged, by
    /// [`SETTLE_TOKENS`] or over [`SETTLE_EVERY`].
    pub fn due(&mut self, progress: Option<Progress>, charged: u64) -> Option<u64> {
        let running = self.running(progress)?;
        let grown = running.checked_sub(charged).filter(|&g| g > 0)?;
        if grown < SETTLE_TOKENS && self.settled_at.elapsed() < SETTLE_EVERY {
            return None;
        }
        self.settled_at = Instant::now();
        Some(running)
    }
}

/// Where server-sent events end in a stream: after a blank line (`\n\n`, `\r\n\r\n`).
#[derive(Debug, Default)]
pub struct EventEdges {
    /// Bytes of the current line so far, a carriage return aside.
    line: usize,
    /// Whether something was written since the last edge.
    inside: bool,
}

impl EventEdges {
    /// Whether what was written so far ends at an edge (or nothing was written).
    pub fn at_edge(&self) -> bool {
        !self.inside
    }

    /// The offset just past the first edge in `chunk`, reading on from the state so far.
    pub fn first_edge(&self, chunk: &[u8]) -> Option<usize> {
        let mut probe = EventEdges {
            line: self.line,
            inside: self.inside,
        };
        for (i, &b) in chunk.iter().enumerate() {
            if probe.step(b) {
                return Some(i + 1);
            }
        }
        None
    }

    pub fn advance(&mut self, chunk: &[u8]) {
        for &b in chunk {
            self.step(b);
        }
    }

    /// Reads one byte; returns whether it ended an event.
    fn step(&mut self, b: u8) -> bool {
        match b {
            b'\n' => {
                let blank = self.line == 0;
                self.line = 0;
                // A blank line ends the event it follows; blank lines between events end nothing.
                if blank && self.inside {
                    self.inside = false;
                    return true;
                }
                false
            }
            b'\r' => false,
            _ => {
                self.line += 1;
                self.inside = true;
                false
            }
        }
    }
}

/// The last event of a stream cut for its budget, in the shape the client's SDK raises.
pub fn budget_event(native: bool, kind: ProviderKind, spent: &Exhausted) -> Bytes {
    let message = format!(
        "Token budget {} is spent; the answer was cut here. Retry in {} s.",
        spent.limit, spent.retry_after_seconds
    );
    let event = if native && kind == ProviderKind::Anthropic {
        let error = serde_json::json!({
            "type": "error",
            "error": { "type": "rate_limit_error", "message": message },
        });
        format!("event: error\ndata: {error}\n\n")
    } else {
        let error = openai_error("tokens", "rate_limit_exceeded", &message);
        format!("data: {error}\n\n")
    };
    Bytes::from(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edges_are_found_whatever_the_chunking() {
        let stream = b"data: {\"a\":1}\n\ndata: {\"b\":2}\r\n\r\nevent: x\ndata: 3\n\n";
        let ends: Vec<usize> = vec![15, 32, 50];
        for size in 1..stream.len() {
            let mut edges = EventEdges::default();
            let mut found = Vec::new();
            let mut offset = 0;
            for chunk in stream.chunks(size) {
                let mut rest = chunk;
                let mut base = offset;
                while let Some(end) = edges.first_edge(rest) {
                    edges.advance(&rest[..end]);
                    assert!(edges.at_edge());
                    found.push(base + end);
                    rest = &rest[end..];
                    base += end;
                }
                edges.advance(rest);
                offset += chunk.len();
            }
            assert_eq!(found, ends, "chunks of {size}");
            assert!(edges.at_edge());
        }
        let mut edges = EventEdges::default();
        assert!(edges.at_edge(), "nothing written yet");
        edges.advance(b"data: x\n");
        assert!(!edges.at_edge(), "one line of an event");
        assert_eq!(edges.first_edge(b"\n"), Some(1));
        assert_eq!(
            EventEdges::default().first_edge(b"\n\n\n"),
            None,
            "blank lines alone end nothing"
        );
    }

    #[test]
    fn the_running_total_takes_the_larger_of_report_and_estimate() {
        let mut meter = Meter::new(true, 100);
        let at = |events, reported: Option<(u64, u64)>| {
            Some(Progress {
                events,
                reported: reported.map(|(p, c)| Usage {
                    prompt_tokens: p,
                    completion_tokens: c,
                }),
            })
        };
        assert_eq!(meter.running(at(5, None)), Some(105));
        assert_eq!(
            meter.running(at(5, Some((900, 3)))),
            Some(903),
            "Anthropic's message_start"
        );
        assert_eq!(meter.due(at(10, None), 100), None, "10 tokens, too soon");
        assert_eq!(meter.due(at(40, None), 100), Some(140), "32 tokens or more");
        assert_eq!(meter.due(at(40, None), 140), None, "nothing new");
        std::thread::sleep(SETTLE_EVERY);
        assert_eq!(
            meter.due(at(41, None), 140),
            Some(141),
            "a while since the last"
        );
        assert_eq!(
            Meter::new(false, 100).running(at(5, None)),
            None,
            "not counted"
        );
        assert_eq!(meter.running(None), None, "a whole answer");
    }

    #[test]
    fn the_last_event_has_each_sdks_error_shape() {
        let spent = Exhausted {
            limit: "TeamTokens".into(),
            retry_after_seconds: 12,
        };
        let openai = budget_event(false, ProviderKind::Anthropic, &spent);
        let text = std::str::from_utf8(&openai).expect("utf-8");
        let data: serde_json::Value =
            serde_json::from_str(text.trim().trim_start_matches("data: ")).expect("json");
        assert_eq!(data["error"]["code"], "rate_limit_exceeded");
        assert!(text.ends_with("\n\n"));
        let anthropic = budget_event(true, ProviderKind::Anthropic, &spent);
        let text = std::str::from_utf8(&anthropic).expect("utf-8");
        assert!(text.starts_with("event: error\ndata: {"), "{text}");
        assert!(text.contains("rate_limit_error") && text.contains("TeamTokens"));
    }
}
