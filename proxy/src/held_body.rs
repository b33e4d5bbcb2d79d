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

use std::collections::VecDeque;

use bytes::Bytes;
use rampart_plugins::waf::encoding::{ContentDecoder, DecodeError};
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldError {
    /// Larger than `limit_bytes` with `oversize = "refuse"`.
    TooLarge,
    /// A multipart, XML or OTLP body larger than a window, which cannot be cut
    /// (`inspect_all`).
    Uncuttable,
    /// A compressed body that cannot be decoded, or decodes past its limits.
    Decode(DecodeError),
}

impl HoldError {
    /// The status and rule id the client is answered with.
    pub fn refusal(&self) -> (u16, &'static str) {
        match self {
            HoldError::TooLarge => (413, "body.too_large"),
            HoldError::Uncuttable => (413, "body.too_large_to_inspect"),
            HoldError::Decode(e) => e.refusal(),
        }
    }
}

/// A compressed body: the WAF judges the decoded bytes, the upstream gets the bytes as
/// sent. An encoded chunk goes on once every byte decoded from it has been judged.
struct Decoding {
    decoder: ContentDecoder,
    /// Encoded chunks not yet released, each with the decoded length reached after it.
    encoded: VecDeque<(Bytes, u64)>,
    decoded_total: u64,
    decoded_released: u64,
}

impl Decoding {
    /// The encoded bytes whose decoded bytes are all released once `decoded` more are.
    fn release(&mut self, decoded: usize) -> Vec<u8> {
        self.decoded_released += decoded as u64;
        let mut out = Vec::new();
        while let Some((chunk, _)) = self
            .encoded
            .front()
            .filter(|(_, end)| *end <= self.decoded_released)
        {
            out.extend_from_slice(chunk);
            self.encoded.pop_front();
        }
        out
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
    decoding: Option<Decoding>,
}

impl HeldBody {
    /// `decoder`: the body's `Content-Encoding`, if it has one.
    pub fn new(
        path: String,
        policy: BodyInspection,
        content_type: &[u8],
        decoder: Option<ContentDecoder>,
    ) -> Self {
        let limit = policy.limit_bytes;
        let hold = match policy.oversize {
            Oversize::InspectAll => Hold::All(BodySegments::new(content_type, &path, limit)),
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
        let decoding = decoder.map(|decoder| Decoding {
            decoder,
            encoded: VecDeque::new(),
            decoded_total: 0,
            decoded_released: 0,
        });
        HeldBody {
            path,
            hold,
            decoding,
        }
    }

    /// The body's announced length, when it has one: a window is then held in one buffer
    /// sized once. (A compressed body's decoded length is not known.)
    pub fn expecting(mut self, length: Option<u64>) -> Self {
        if let (Hold::All(segments), None) = (&mut self.hold, &self.decoding) {
            segments.announce_length(length);
        }
        self
    }

    /// Takes the next chunk (if any) and whether the body ended; returns the parts that
    /// are ready, in order.
    pub fn take(&mut self, chunk: Option<Bytes>, end: bool) -> Result<Vec<Part>, HoldError> {
        let Some(decoding) = self.decoding.as_mut() else {
            return self.hold.take(chunk, end);
        };
        let mut decoded = match &chunk {
            Some(c) => decoding.decoder.push(c).map_err(HoldError::Decode)?,
            None => Vec::new(),
        };
        if end {
            decoded.extend(decoding.decoder.finish().map_err(HoldError::Decode)?);
        }
        decoding.decoded_total += decoded.len() as u64;
        if let Some(c) = chunk {
            decoding.encoded.push_back((c, decoding.decoded_total));
        }
        let decoded = (!decoded.is_empty()).then(|| Bytes::from(decoded));
        let parts = self.hold.take(decoded, end)?;
        // Each part carries on the encoded bytes it completes, not the decoded ones.
        let mut out = Vec::with_capacity(parts.len() + 1);
        for part in parts {
            out.push(match part {
                Part::Judge(segment) => {
                    let release = decoding.release(segment.release_len());
                    Part::Judge(segment.releasing(release))
                }
                Part::Pass(bytes) => Part::Pass(decoding.release(bytes.len()).into()),
            });
        }
        if end {
            // What decoded to nothing (a gzip trailer) goes on after the last part.
            let rest = decoding.release(0);
            if !rest.is_empty() {
                out.push(Part::Pass(rest.into()));
            }
        }
        Ok(out)
    }
}

impl Hold {
    fn take(&mut self, chunk: Option<Bytes>, end: bool) -> Result<Vec<Part>, HoldError> {
        match self {
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
                Ok(vec![Part::Judge(Segment::prefix(release, *limit))])
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
            ..BodyInspection::default()
        }
    }

    /// (judged bytes, released bytes) of a body fed in 3,000-byte chunks.
    fn run(oversize: Oversize, body: &[u8]) -> Result<(usize, Vec<u8>), HoldError> {
        let mut held = HeldBody::new("/".into(), policy(oversize), b"text/plain", None);
        let (mut judged, mut released) = (0, Vec::new());
        let chunks: Vec<&[u8]> = body.chunks(3000).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let end = i + 1 == chunks.len();
            for part in held.take(Some(Bytes::copy_from_slice(chunk)), end)? {
                match part {
                    Part::Judge(s) => {
                        judged += s.doc().len();
                        released.extend_from_slice(&s.into_release());
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

    #[test]
    fn a_gzip_body_is_judged_decoded_and_goes_on_as_sent() {
        use std::io::Write;
        let text: Vec<u8> = (0..60_000u32)
            .flat_map(|i| format!("field{i}=value{}&", i * 7919 % 1000).into_bytes())
            .collect();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&text).expect("gzip");
        let sent = gz.finish().expect("gzip");
        let decoder = ContentDecoder::for_header(Some(b"gzip"), Default::default())
            .expect("supported")
            .expect("encoded");
        let policy = policy(Oversize::InspectAll);
        let mut held = HeldBody::new(
            "/".into(),
            policy,
            b"application/x-www-form-urlencoded",
            Some(decoder),
        );
        let (mut judged, mut released, mut judged_parts) = (Vec::new(), Vec::new(), 0);
        let chunks: Vec<&[u8]> = sent.chunks(4096).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let end = i + 1 == chunks.len();
            for part in held
                .take(Some(Bytes::copy_from_slice(chunk)), end)
                .expect("holds")
            {
                match part {
                    Part::Judge(s) => {
                        judged_parts += 1;
                        judged.extend_from_slice(s.doc());
                        released.extend_from_slice(&s.into_release());
                    }
                    Part::Pass(b) => released.extend_from_slice(&b),
                }
            }
            // Never more encoded bytes on their way than what was judged could produce.
            assert!(released.len() <= sent.len());
        }
        assert_eq!(released, sent, "the upstream gets the bytes as sent");
        assert!(
            judged_parts > 10,
            "judged a window at a time: {judged_parts}"
        );
        let judged = String::from_utf8_lossy(&judged);
        assert!(
            judged.contains("field59999=value"),
            "the decoded text was judged"
        );

        // A corrupt stream is refused as such.
        let decoder =
            ContentDecoder::for_header(Some(b"gzip"), Default::default()).expect("supported");
        let mut held = HeldBody::new("/".into(), policy, b"text/plain", decoder);
        let e = held
            .take(Some(Bytes::from_static(b"plain text")), true)
            .err();
        assert_eq!(e.map(|e| e.refusal()), Some((400, "body.corrupt_encoding")));
    }
}
