//! Shared secrets, compared in constant time and never printed.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use subtle::{Choice, ConstantTimeEq};

/// The values currently valid for one secret. Several at once make rotation possible:
/// the new value is added, clients move over, the old value is removed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretValues(Vec<Box<[u8]>>);

impl SecretValues {
    pub fn new(values: impl IntoIterator<Item = Vec<u8>>) -> Self {
        SecretValues(
            values
                .into_iter()
                .filter(|v| !v.is_empty())
                .map(Vec::into_boxed_slice)
                .collect(),
        )
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every value, the current one first.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.0.iter().map(|v| &**v)
    }

    /// The current value (sources list it first), for a key rampart sends rather than checks.
    pub fn first(&self) -> Option<&[u8]> {
        self.0.first().map(|v| &**v)
    }

    /// Constant time in the secret's content: every value is compared, no early exit, and the
    /// work depends only on the candidate's length, which the caller already knows.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        let mut any = Choice::from(0);
        for value in &self.0 {
            any |= ct_eq_padded(value, candidate);
        }
        bool::from(any)
    }
}

fn ct_eq_padded(secret: &[u8], candidate: &[u8]) -> Choice {
    let mut same = (secret.len() as u64).ct_eq(&(candidate.len() as u64));
    // Compare the candidate against the secret repeated to its length, so that a length
    // mismatch costs the same as a content mismatch.
    for (i, c) in candidate.iter().enumerate() {
        same &= c.ct_eq(&secret[i % secret.len()]);
    }
    same
}

impl fmt::Debug for SecretValues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretValues(<{} redacted>)", self.0.len())
    }
}

/// A named secret whose values the proxy's secrets sources refresh in place; plugins hold
/// a clone and always see the current values.
#[derive(Clone)]
pub struct SharedSecret {
    name: Arc<str>,
    values: Arc<ArcSwap<SecretValues>>,
}

impl SharedSecret {
    pub fn new(name: &str, values: SecretValues) -> Self {
        SharedSecret {
            name: name.into(),
            values: Arc::new(ArcSwap::from_pointee(values)),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn matches(&self, candidate: &[u8]) -> bool {
        self.values.load().matches(candidate)
    }

    pub fn store(&self, values: SecretValues) {
        self.values.store(Arc::new(values));
    }

    pub fn load(&self) -> Arc<SecretValues> {
        self.values.load_full()
    }
}

impl fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SharedSecret({:?}, <redacted>)", self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_any_current_value() {
        let s = SecretValues::new([b"old-secret".to_vec(), b"new-secret".to_vec()]);
        assert!(s.matches(b"old-secret"));
        assert!(s.matches(b"new-secret"));
        assert!(!s.matches(b"new-secreT"));
        assert!(!s.matches(b"new-secret-and-more"));
        assert!(!s.matches(b"new"));
        assert!(!s.matches(b""));
    }

    #[test]
    fn empty_values_never_match() {
        let s = SecretValues::new([Vec::new()]);
        assert!(s.is_empty());
        assert!(!s.matches(b""));
    }

    #[test]
    fn debug_never_prints_values() {
        let s = SharedSecret::new("origin", SecretValues::new([b"hunter2".to_vec()]));
        let shown = format!("{s:?} {:?}", s.load());
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn rotation_is_seen_by_holders() {
        let s = SharedSecret::new("origin", SecretValues::new([b"a".to_vec()]));
        let held = s.clone();
        s.store(SecretValues::new([b"b".to_vec()]));
        assert!(held.matches(b"b"));
        assert!(!held.matches(b"a"));
    }
}

/// A request header that must carry one of a secret's values.
#[derive(Debug, Clone)]
pub struct SecretHeader {
    pub header: http::HeaderName,
    pub secret: SharedSecret,
}

/// What a [`SecretHeader`] found in a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretPresence {
    Valid,
    Missing,
    /// Wrong value, or the header repeated (ambiguous, so never trusted).
    Invalid,
}

impl SecretHeader {
    pub fn check(&self, headers: &http::HeaderMap) -> SecretPresence {
        let mut values = headers.get_all(&self.header).iter();
        match (values.next(), values.next()) {
            (None, _) => SecretPresence::Missing,
            (Some(v), None) if self.secret.matches(v.as_bytes()) => SecretPresence::Valid,
            _ => SecretPresence::Invalid,
        }
    }
}
