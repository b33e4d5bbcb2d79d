//! Signed tokens (JWS compact form) and the public keys that verify them (JWK sets).
//!
//! Only asymmetric algorithms exist here: RS256, PS256 and ES256. A token's `alg` is never
//! trusted on its own: it must be one the issuer allows *and* fit the key its `kid` names, so
//! that `none`, an HMAC "signed" with a public key, or an RSA key used as PSS when the JWK
//! says otherwise are all refused before any signature is checked.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde::Deserialize;
use thiserror::Error;

/// Longer tokens are refused unread: Cognito access tokens are about 1 KB.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum Algorithm {
    RS256,
    PS256,
    ES256,
}

impl Algorithm {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "RS256" => Some(Algorithm::RS256),
            "PS256" => Some(Algorithm::PS256),
            "ES256" => Some(Algorithm::ES256),
            _ => None,
        }
    }
}

/// Why a token or a key was not accepted. The variant names the reason for metrics and logs;
/// none of them is ever shown to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum TokenError {
    #[error("malformed")]
    Malformed,
    #[error("algorithm not allowed")]
    Algorithm,
    #[error("no kid")]
    NoKid,
    #[error("unknown kid")]
    UnknownKid,
    #[error("algorithm does not fit the key")]
    KeyMismatch,
    #[error("bad signature")]
    Signature,
}

/// A public key from a JWK set, ready to verify.
pub struct VerifyingKey {
    material: KeyMaterial,
    /// The JWK's own `alg`, when it names one: then only that algorithm may use the key.
    alg: Option<Algorithm>,
}

enum KeyMaterial {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// Uncompressed SEC1 point (0x04 || x || y) on P-256.
    EcP256(Vec<u8>),
}

impl VerifyingKey {
    fn fits(&self, alg: Algorithm) -> bool {
        let family = matches!(
            (&self.material, alg),
            (KeyMaterial::Rsa { .. }, Algorithm::RS256 | Algorithm::PS256)
                | (KeyMaterial::EcP256(_), Algorithm::ES256)
        );
        family && self.alg.is_none_or(|a| a == alg)
    }

    fn verify(&self, alg: Algorithm, message: &[u8], sig: &[u8]) -> bool {
        match (&self.material, alg) {
            (KeyMaterial::Rsa { n, e }, Algorithm::RS256) => RsaPublicKeyComponents { n, e }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, message, sig)
                .is_ok(),
            (KeyMaterial::Rsa { n, e }, Algorithm::PS256) => RsaPublicKeyComponents { n, e }
                .verify(&signature::RSA_PSS_2048_8192_SHA256, message, sig)
                .is_ok(),
            (KeyMaterial::EcP256(point), Algorithm::ES256) => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(message, sig)
                    .is_ok()
            }
            _ => false,
        }
    }
}

/// The signing keys of one issuer, by `kid`.
#[derive(Default)]
pub struct JwkSet {
    keys: HashMap<String, VerifyingKey>,
}

impl fmt::Debug for JwkSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut kids: Vec<&str> = self.keys.keys().map(String::as_str).collect();
        kids.sort_unstable();
        f.debug_struct("JwkSet").field("kids", &kids).finish()
    }
}

#[derive(Debug, Error)]
#[error("JWK set: {0}")]
pub struct JwksError(String);

#[derive(Deserialize)]
struct RawSet {
    keys: Vec<RawKey>,
}

#[derive(Deserialize)]
struct RawKey {
    kty: String,
    kid: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    alg: Option<String>,
    n: Option<String>,
    e: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

impl JwkSet {
    /// Reads a JWK set document. Keys rampart cannot use (encryption keys, other curves,
    /// symmetric keys, keys without a `kid`) are skipped; a document without one usable key
    /// is an error, so that a broken endpoint never replaces good keys with none.
    pub fn parse(json: &[u8]) -> Result<Self, JwksError> {
        let raw: RawSet =
            serde_json::from_slice(json).map_err(|e| JwksError(format!("not a JWK set: {e}")))?;
        let mut keys = HashMap::new();
        for key in raw.keys {
            if key.use_.as_deref().is_some_and(|u| u != "sig") {
                continue;
            }
            let Some(kid) = key.kid.clone() else { continue };
            let alg = match key.alg.as_deref() {
                None => None,
                Some(name) => match Algorithm::parse(name) {
                    Some(a) => Some(a),
                    None => continue,
                },
            };
            let Some(material) = key_material(&key) else {
                continue;
            };
            keys.insert(kid, VerifyingKey { material, alg });
        }
        if keys.is_empty() {
            return Err(JwksError("no usable signing key (RSA or EC P-256)".into()));
        }
        Ok(JwkSet { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn contains(&self, kid: &str) -> bool {
        self.keys.contains_key(kid)
    }

    /// Checks the signature of `token` with the key its header names.
    pub fn verify(&self, token: &Token<'_>) -> Result<(), TokenError> {
        let key = self.keys.get(&token.kid).ok_or(TokenError::UnknownKid)?;
        if !key.fits(token.alg) {
            return Err(TokenError::KeyMismatch);
        }
        if key.verify(token.alg, token.signed.as_bytes(), &token.signature) {
            Ok(())
        } else {
            Err(TokenError::Signature)
        }
    }
}

fn key_material(key: &RawKey) -> Option<KeyMaterial> {
    let b64 = |v: &Option<String>| v.as_deref().and_then(|s| URL_SAFE_NO_PAD.decode(s).ok());
    match key.kty.as_str() {
        "RSA" => {
            let n = b64(&key.n)?;
            let e = b64(&key.e)?;
            // ring accepts 2048 to 8192 bits; a shorter key would only fail later, per request.
            let bits = n.iter().skip_while(|&&b| b == 0).count() * 8;
            (2048..=8192)
                .contains(&bits)
                .then_some(KeyMaterial::Rsa { n, e })
        }
        "EC" if key.crv.as_deref() == Some("P-256") => {
            let (x, y) = (b64(&key.x)?, b64(&key.y)?);
            if x.len() != 32 || y.len() != 32 {
                return None;
            }
            let mut point = Vec::with_capacity(65);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            Some(KeyMaterial::EcP256(point))
        }
        _ => None,
    }
}

/// A compact JWS split into its parts, its header read and checked; the payload is decoded
/// but not yet trusted.
#[derive(Debug)]
pub struct Token<'a> {
    pub alg: Algorithm,
    pub kid: String,
    /// `header.payload`: what the signature covers.
    pub signed: &'a str,
    pub payload: Vec<u8>,
    signature: Vec<u8>,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
    /// A header that must be understood (RFC 7515 4.1.11): rampart understands none.
    crit: Option<serde::de::IgnoredAny>,
}

impl<'a> Token<'a> {
    /// Splits and decodes `text`. Its `alg` is one rampart knows; whether the issuer allows
    /// it is the caller's to check.
    pub fn parse(text: &'a str) -> Result<Self, TokenError> {
        if text.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let mut parts = text.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let decode = |part: &str| {
            URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|_| TokenError::Malformed)
        };
        let header: Header =
            serde_json::from_slice(&decode(h)?).map_err(|_| TokenError::Malformed)?;
        if header.crit.is_some() {
            return Err(TokenError::Malformed);
        }
        let alg = Algorithm::parse(&header.alg).ok_or(TokenError::Algorithm)?;
        let kid = header.kid.ok_or(TokenError::NoKid)?;
        Ok(Token {
            alg,
            kid,
            signed: &text[..h.len() + 1 + p.len()],
            payload: decode(p)?,
            signature: decode(s)?,
        })
    }
}

/// Where a plugin gets an issuer's current keys. The proxy fetches them (at start, in the
/// background, and on demand); this crate only reads what was fetched.
pub trait KeySource: Send + Sync {
    /// The keys as last fetched successfully.
    fn keys(&self) -> Arc<JwkSet>;

    /// Asks for the keys to be fetched again now, because a token named a `kid` not among
    /// them (the issuer may have rotated its keys). The future ends when that fetch has
    /// ended, whatever its outcome. `None` when a fetch was asked for too recently: forged
    /// kids must never turn into a flood of fetches.
    fn refetch(&self) -> Option<RefetchFuture>;
}

pub type RefetchFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Keys that never change and are never fetched: for `rampart check`, tests and benchmarks.
pub struct FixedKeys(pub Arc<JwkSet>);

impl KeySource for FixedKeys {
    fn keys(&self) -> Arc<JwkSet> {
        self.0.clone()
    }

    fn refetch(&self) -> Option<RefetchFuture> {
        None
    }
}
