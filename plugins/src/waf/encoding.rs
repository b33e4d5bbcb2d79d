//! Request bodies sent compressed (`Content-Encoding: gzip` or `deflate`), decoded for the
//! WAF within limits that a decompression bomb meets first.
//!
//! The WAF judges what the upstream will read: the decoded bytes. The upstream still
//! receives the bytes as the client sent them. Decoding is incremental, so a large body is
//! decoded a chunk at a time, and the limits are checked as output is produced, not after.

use std::io::Write;

use flate2::write::{DeflateDecoder, GzDecoder, ZlibDecoder};
use thiserror::Error;

/// What a decoder may produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Decoded bytes in all, whatever the ratio.
    pub max_bytes: u64,
    /// Decoded bytes per encoded byte, once past `ratio_grace` decoded bytes: ordinary
    /// JSON and text compress 3 to 20 times; a bomb, a thousand.
    pub max_ratio: u64,
    /// Decoded bytes allowed whatever the ratio (small bodies compress very well).
    pub ratio_grace: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_bytes: 64 << 20,
            max_ratio: 100,
            ratio_grace: 1 << 20,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// An encoding rampart does not decode (br, zstd, compress) or a stack of several.
    #[error("content encoding {0:?} is not decoded here")]
    Unsupported(String),
    /// Past [`DecodeLimits`]: a decompression bomb, or a body larger than allowed.
    #[error("decoded body past its limit ({decoded} bytes from {encoded})")]
    TooLarge { decoded: u64, encoded: u64 },
    /// Bytes that are not what the encoding says (or a stream cut short).
    #[error("body is not valid {0}")]
    Corrupt(&'static str),
}

impl DecodeError {
    /// The status and rule id a refused request is answered with.
    pub fn refusal(&self) -> (u16, &'static str) {
        match self {
            DecodeError::Unsupported(_) => (415, "body.unsupported_encoding"),
            DecodeError::TooLarge { .. } => (413, "body.decompression_limit"),
            DecodeError::Corrupt(_) => (400, "body.corrupt_encoding"),
        }
    }
}

/// Where decoded bytes go: counted against the limits as they come.
struct Sink {
    out: Vec<u8>,
    decoded: u64,
    encoded: u64,
    limits: DecodeLimits,
}

impl Sink {
    fn within_limits(&self) -> bool {
        self.decoded <= self.limits.max_bytes
            && (self.decoded <= self.limits.ratio_grace
                || self.decoded <= self.encoded.saturating_mul(self.limits.max_ratio))
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.decoded += buf.len() as u64;
        if !self.within_limits() {
            return Err(std::io::Error::other("decoded body past its limit"));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A decoder writing into a [`Sink`].
trait Inflate: Write + Send + Sync {
    fn end(&mut self) -> std::io::Result<()>;
    fn sink(&mut self) -> &mut Sink;
}

macro_rules! inflate {
    ($($decoder:ident),*) => {$(
        impl Inflate for $decoder<Sink> {
            fn end(&mut self) -> std::io::Result<()> {
                self.try_finish()
            }
            fn sink(&mut self) -> &mut Sink {
                self.get_mut()
            }
        }
    )*};
}
inflate!(GzDecoder, ZlibDecoder, DeflateDecoder);

/// An incremental decoder of one request body.
pub struct ContentDecoder {
    name: &'static str,
    inflate: Option<Box<dyn Inflate>>,
    /// `deflate` is zlib-wrapped by the standard, raw deflate by some clients: decided on
    /// the first two bytes, held here until they came.
    undecided: Option<(Sink, Vec<u8>)>,
}

impl ContentDecoder {
    /// The decoder for a `Content-Encoding` header's value; `None` when the body is not
    /// encoded (no header, or `identity`).
    pub fn for_header(
        value: Option<&[u8]>,
        limits: DecodeLimits,
    ) -> Result<Option<Self>, DecodeError> {
        let Some(value) = value else {
            return Ok(None);
        };
        let text = String::from_utf8_lossy(value).trim().to_ascii_lowercase();
        let codings: Vec<&str> = text
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty() && *c != "identity")
            .collect();
        let sink = Sink {
            out: Vec::new(),
            decoded: 0,
            encoded: 0,
            limits,
        };
        let decoder = match codings.as_slice() {
            [] => return Ok(None),
            ["gzip" | "x-gzip"] => ContentDecoder {
                name: "gzip",
                inflate: Some(Box::new(GzDecoder::new(sink))),
                undecided: None,
            },
            ["deflate"] => ContentDecoder {
                name: "deflate",
                inflate: None,
                undecided: Some((sink, Vec::new())),
            },
            _ => return Err(DecodeError::Unsupported(text)),
        };
        Ok(Some(decoder))
    }

    /// Decodes the next encoded chunk; returns the decoded bytes it completed.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<u8>, DecodeError> {
        if let Some((_, head)) = &mut self.undecided {
            head.extend_from_slice(chunk);
            if head.len() < 2 {
                return Ok(Vec::new());
            }
            let Some((sink, head)) = self.undecided.take() else {
                return Err(DecodeError::Corrupt(self.name));
            };
            // RFC 1950: CM 8 in the low nibble, and the header a multiple of 31.
            let zlib =
                head[0] & 0x0f == 8 && (u16::from(head[0]) << 8 | u16::from(head[1])) % 31 == 0;
            self.inflate = Some(if zlib {
                Box::new(ZlibDecoder::new(sink))
            } else {
                Box::new(DeflateDecoder::new(sink))
            });
            return self.feed(&head);
        }
        self.feed(chunk)
    }

    fn feed(&mut self, chunk: &[u8]) -> Result<Vec<u8>, DecodeError> {
        let Some(inflate) = self.inflate.as_mut() else {
            return Err(DecodeError::Corrupt(self.name));
        };
        inflate.sink().encoded += chunk.len() as u64;
        let written = inflate.write_all(chunk);
        self.settle(written)
    }

    /// The decoded bytes so far, or why decoding stopped.
    fn settle(&mut self, result: std::io::Result<()>) -> Result<Vec<u8>, DecodeError> {
        let Some(inflate) = self.inflate.as_mut() else {
            return Err(DecodeError::Corrupt(self.name));
        };
        let sink = inflate.sink();
        match result {
            Ok(()) => Ok(std::mem::take(&mut sink.out)),
            Err(_) if !sink.within_limits() => Err(DecodeError::TooLarge {
                decoded: sink.decoded,
                encoded: sink.encoded,
            }),
            Err(_) => Err(DecodeError::Corrupt(self.name)),
        }
    }

    /// The body ended: the last decoded bytes. A stream cut short is corrupt.
    pub fn finish(&mut self) -> Result<Vec<u8>, DecodeError> {
        let Some(inflate) = self.inflate.as_mut() else {
            // A deflate body of fewer than two bytes.
            return Err(DecodeError::Corrupt(self.name));
        };
        let ended = inflate.end();
        self.settle(ended)
    }

    /// Decodes a whole body at once.
    pub fn decode_all(&mut self, body: &[u8]) -> Result<Vec<u8>, DecodeError> {
        let mut out = self.push(body)?;
        out.extend(self.finish()?);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::{DeflateEncoder, GzEncoder, ZlibEncoder};
    use flate2::Compression;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).expect("gzip");
        e.finish().expect("gzip")
    }

    fn decoder(header: &str) -> ContentDecoder {
        ContentDecoder::for_header(Some(header.as_bytes()), DecodeLimits::default())
            .expect("supported")
            .expect("encoded")
    }

    #[test]
    fn gzip_and_both_deflates_decode_in_any_chunking() {
        let text = b"{\"messages\":[{\"role\":\"user\",\"content\":\"hello\"}]}".repeat(300);
        let mut zlib = ZlibEncoder::new(Vec::new(), Compression::default());
        zlib.write_all(&text).expect("zlib");
        let mut raw = DeflateEncoder::new(Vec::new(), Compression::default());
        raw.write_all(&text).expect("deflate");
        for (header, encoded) in [
            ("gzip", gzip(&text)),
            ("x-gzip", gzip(&text)),
            ("deflate", zlib.finish().expect("zlib")),
            ("deflate", raw.finish().expect("deflate")),
        ] {
            for chunk in [1, 7, 4096, encoded.len()] {
                let mut d = decoder(header);
                let mut out = Vec::new();
                for c in encoded.chunks(chunk) {
                    out.extend(d.push(c).expect("decodes"));
                }
                out.extend(d.finish().expect("ends"));
                assert_eq!(out, text, "{header} in chunks of {chunk}");
            }
        }
    }

    #[test]
    fn identity_or_nothing_is_not_encoded_and_the_rest_is_refused() {
        let none = |h: Option<&str>| {
            ContentDecoder::for_header(h.map(str::as_bytes), DecodeLimits::default())
                .expect("fine")
                .is_none()
        };
        assert!(none(None) && none(Some("identity")) && none(Some(" ")));
        for bad in ["br", "zstd", "compress", "gzip, gzip", "gzip, br"] {
            let e = ContentDecoder::for_header(Some(bad.as_bytes()), DecodeLimits::default())
                .err()
                .expect("refused");
            assert_eq!(e.refusal(), (415, "body.unsupported_encoding"), "{bad}");
        }
    }

    #[test]
    fn a_bomb_stops_at_the_limit_not_after() {
        // 100 MiB of zeros compress to about 100 KiB.
        let mut e = GzEncoder::new(Vec::new(), Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..100 {
            e.write_all(&zeros).expect("gzip");
        }
        let bomb = e.finish().expect("gzip");
        let mut d = decoder("gzip");
        let mut produced = 0;
        let mut refused = None;
        for c in bomb.chunks(16 * 1024) {
            match d.push(c) {
                Ok(out) => produced += out.len(),
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
        }
        let e = refused.expect("the bomb is refused before its end");
        assert_eq!(e.refusal(), (413, "body.decompression_limit"));
        // The ratio stops it, long before the 64 MiB cap: at most grace + 100 x encoded.
        assert!(
            produced < 8 << 20,
            "decoded {produced} bytes before refusing"
        );

        // Just inside the cap: 2 MiB of text (random words: it compresses under 2 times).
        let mut x: u32 = 2463534242;
        let text: Vec<u8> = (0..2u32 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                b"etaoin shrdlu"[(x % 13) as usize]
            })
            .collect();
        let limits = DecodeLimits {
            max_bytes: 2 << 20,
            ..DecodeLimits::default()
        };
        let mut d = ContentDecoder::for_header(Some(b"gzip"), limits)
            .expect("ok")
            .expect("gzip");
        assert_eq!(d.decode_all(&gzip(&text)).map(|o| o.len()), Ok(text.len()));
        let limits = DecodeLimits {
            max_bytes: (2 << 20) - 1,
            ..limits
        };
        let mut d = ContentDecoder::for_header(Some(b"gzip"), limits)
            .expect("ok")
            .expect("gzip");
        let e = d.decode_all(&gzip(&text)).expect_err("one byte past");
        assert_eq!(e.refusal().0, 413);
    }

    #[test]
    fn corrupt_or_truncated_streams_are_refused() {
        let good = gzip(b"hello world hello world");
        for bad in [
            &good[..good.len() - 4],
            &good[..10],
            b"not gzip at all".as_slice(),
            b"",
        ] {
            let e = decoder("gzip").decode_all(bad).err();
            assert_eq!(
                e.map(|e| e.refusal()),
                Some((400, "body.corrupt_encoding")),
                "{bad:?}"
            );
        }
        let e = decoder("deflate").decode_all(b"x").err();
        assert_eq!(e.map(|e| e.refusal().0), Some(400));
    }
}
