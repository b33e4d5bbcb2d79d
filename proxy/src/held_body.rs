//! Request bodies held back from a pooled upstream until the WAF judged them: the body
//! phase's bookkeeping, apart from Pingora's plumbing in [`crate::proxy`].
//!
//! What is held, and for how long, follows the listener's `body_inspection`:
//! - `inspect_all` (the default): every byte is judged, a window (`limit_bytes`) at a time,
//!   cut where the body's format allows ([`BodySegments`]); each part goes on once judged.
//!   Memory stays within about one window whatever the body's size.
//! - `inspect_prefix`: the first `limit_bytes` are judged, the rest passes unjudged. An
//!   explicit choice for routes that carry what cannot be inspected.
//! - `refuse`: a body larger than `limit_bytes` is refused (413).

use bytes::Bytes;
use rampart_plugins::waf::stream::{BodySegments, Segment, TooLarge};

use crate::config::{BodyInspection, Oversize};

/// A part of the body, ready to go on.
pub enum Part {
    /// To be judged before its bytes go on.
    Judge(Segment),
    /// Past the judged prefix (`inspect_prefix`): goes on as it is.
    Pass(Bytes),
}

/// Why a body cannot be held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldError {
    /// Larger than `limit_bytes` with `oversize = "refuse"`.
    TooLarge,
    /// A multipart or XML body larger than a window, which cannot be cut (`inspect_all`).
    Uncuttable,
}

impl HoldError {
    pub fn rule(self) -> &'static str {
        match self {
            HoldError::TooLarge => "body.too_large",
            HoldError::Uncuttable => "body.too_large_to_inspect",
        }
    }
}

enum Hold {
    All(BodySegments),
    Prefix {
        buf: Vec<u8>,
        limit: usize,
        judged: bool,
    },
    Refuse {
        buf: Vec<u8>,
        limit: usize,
    },
}

pub struct HeldBody {
    /// The normalised path the request is judged under.
    pub path: String,
    hold: Hold,
}

impl HeldBody {
    pub fn new(path: String, policy: BodyInspection, content_type: &[u8]) -> Self {
        let limit = policy.limit_bytes;
        let hold = match policy.oversize {
            Oversize::InspectAll => Hold::All(BodySegments::new(content_type, limit)),
            Oversize::InspectPrefix => Hold::Prefix {
                buf: Vec::new(),
                limit,
                judged: false,
            },
            Oversize::Refuse => Hold::Refuse {
                buf: Vec::new(),
                limit,
            },
        };
        HeldBody { path, hold }
    }

    /// Takes the next chunk (if any) and whether the body ended; returns the parts that
    /// are ready, in order.
    pub fn take(&mut self, chunk: Option<Bytes>, end: bool) -> Result<Vec<Part>, HoldError> {
        match &mut self.hold {
            Hold::All(segments) => {
                let mut parts = match &chunk {
                    Some(chunk) => segments
                        .push(chunk)
                        .map_err(|TooLarge| HoldError::Uncuttable)?,
                    None => Vec::new(),
                };
                if end {
                    parts.extend(segments.finish());
                }
                Ok(parts.into_iter().map(Part::Judge).collect())
            }
            Hold::Prefix { buf, limit, judged } => {
                if *judged {
                    return Ok(chunk.into_iter().map(Part::Pass).collect());
                }
                if let Some(chunk) = chunk {
                    buf.extend_from_slice(&chunk);
                }
                if buf.len() <= *limit && !end {
                    return Ok(Vec::new());
                }
                *judged = true;
                let release = std::mem::take(buf);
                let part = if release.len() > *limit {
                    Segment::judged_by(release[..*limit].to_vec(), release)
                } else {
                    Segment::whole(release)
                };
                Ok(vec![Part::Judge(part)])
            }
            Hold::Refuse { buf, limit } => {
                if let Some(chunk) = chunk {
                    buf.extend_from_slice(&chunk);
                }
                if buf.len() > *limit {
                    return Err(HoldError::TooLarge);
                }
                if !end {
                    return Ok(Vec::new());
                }
                Ok(vec![Part::Judge(Segment::whole(std::mem::take(buf)))])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(oversize: Oversize) -> BodyInspection {
        BodyInspection {
            limit_bytes: 10_000,
            oversize,
        }
    }

    /// (judged bytes, released bytes) of a body fed in 3,000-byte chunks.
    fn run(oversize: Oversize, body: &[u8]) -> Result<(usize, Vec<u8>), HoldError> {
        let mut held = HeldBody::new("/".into(), policy(oversize), b"text/plain");
        let (mut judged, mut released) = (0, Vec::new());
        let chunks: Vec<&[u8]> = body.chunks(3000).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let end = i + 1 == chunks.len();
            for part in held.take(Some(Bytes::copy_from_slice(chunk)), end)? {
                match part {
                    Part::Judge(s) => {
                        judged += s.doc().len();
                        released.extend_from_slice(&s.release);
                    }
                    Part::Pass(b) => released.extend_from_slice(&b),
                }
            }
        }
        Ok((judged, released))
    }

    #[test]
    fn each_policy_judges_what_it_says() {
        let body = vec![b'a'; 50_000];
        let (judged, released) = run(Oversize::InspectAll, &body).expect("all");
        assert!(judged >= body.len(), "every byte judged: {judged}");
        assert_eq!(released, body);
        let (judged, released) = run(Oversize::InspectPrefix, &body).expect("prefix");
        assert_eq!(judged, 10_000);
        assert_eq!(released, body);
        assert_eq!(run(Oversize::Refuse, &body), Err(HoldError::TooLarge));
        let small = vec![b'a'; 9_000];
        assert_eq!(run(Oversize::Refuse, &small).expect("fits").0, 9_000);
    }
}
