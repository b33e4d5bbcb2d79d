//! Bedrock's binary event streams (ConverseStream), read frame by frame out of chunks cut
//! anywhere. Two readings of the input:
//! - as raw bytes, fed in chunks: never a panic, and the frames and the error are the same
//!   however the bytes are cut;
//! - as frames to send (kinds and payloads taken from the input), encoded, one byte maybe
//!   flipped, fed in chunks: every frame comes back as sent, and a flipped byte never yields a
//!   frame that was not sent (only the frames before it, then an error or a wait for more).
//!
//! The translator to OpenAI's chunks reads the same frames and must not panic either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rampart_plugins::bedrock::{encode_frame, Frame, FrameError, FrameReader, StreamTranslator};

/// The frames `bytes` hold, fed `cut` bytes at a time, and the error that stopped the
/// reading, if any (nothing is fed after an error: the stream cannot be read on).
fn read(bytes: &[u8], cut: usize) -> (Vec<Frame>, Option<FrameError>) {
    let mut reader = FrameReader::default();
    let mut frames = Vec::new();
    for piece in bytes.chunks(cut.max(1)) {
        match reader.feed(piece) {
            Ok(more) => frames.extend(more),
            Err(e) => return (frames, Some(e)),
        }
    }
    (frames, None)
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let cut = usize::from(control) % 61 + 1;

    // Raw bytes: the same outcome whatever the cuts.
    let whole = read(rest, rest.len());
    let chunked = read(rest, cut);
    assert_eq!(whole.0, chunked.0);
    assert_eq!(whole.1.is_some(), chunked.1.is_some());
    let mut translator = StreamTranslator::new("m", "id", 0);
    for piece in rest.chunks(cut) {
        if translator.feed(piece).is_err() {
            break;
        }
    }

    // Frames made from the input: kinds and payloads separated by 0xff.
    let mut sent = Vec::new();
    let mut stream = Vec::new();
    // Where each sent frame ends in the stream.
    let mut ends = Vec::new();
    for (i, field) in rest.split(|&b| b == 0xff).enumerate() {
        let kind = String::from_utf8_lossy(&field[..field.len().min(12)]).into_owned();
        let message_type = if i % 5 == 4 { "exception" } else { "event" };
        stream.extend(encode_frame(message_type, &kind, field));
        ends.push(stream.len());
        sent.push((message_type.to_string(), kind, field.to_vec()));
    }
    let (frames, error) = read(&stream, cut);
    assert!(error.is_none(), "{error:?}");
    let got: Vec<_> = frames
        .into_iter()
        .map(|f| (f.message_type, f.kind, f.payload))
        .collect();
    assert_eq!(got, sent);

    if control & 0x80 != 0 && !stream.is_empty() {
        let at = usize::from(control) * 7919 % stream.len();
        stream[at] ^= 1 << (control % 8);
        let (frames, _) = read(&stream, cut);
        let got: Vec<_> = frames
            .into_iter()
            .map(|f| (f.message_type, f.kind, f.payload))
            .collect();
        assert!(got.len() <= sent.len() && got[..] == sent[..got.len()]);
        // The frame holding the flipped byte is never among them.
        let flipped = ends.partition_point(|&end| end <= at);
        assert!(
            got.len() <= flipped,
            "the frame with a flipped byte was read"
        );
    }
});
