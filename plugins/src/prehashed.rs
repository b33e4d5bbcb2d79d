//! A hasher for keys that are already keyed hashes (a rate limiter's client keys, the
//! fingerprints of a request's fields): a table needs only their bits spread, not hashed again.

/// Spreads the bits of a key that is already a hash.
#[derive(Default)]
pub struct KeyBits(u64);

impl std::hash::Hasher for KeyBits {
    fn finish(&self) -> u64 {
        self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u32(&mut self, v: u32) {
        self.0 = self.0.rotate_left(32) ^ u64::from(v);
    }
    fn write_u64(&mut self, v: u64) {
        self.0 ^= v;
    }
    fn write_usize(&mut self, _length: usize) {}
}

/// A hash table's hasher for already-hashed keys.
pub type Prehashed = std::hash::BuildHasherDefault<KeyBits>;
