//! A token issuer for tests and benchmarks: fresh RSA and EC P-256 keys, their JWK set, and
//! tokens signed with them, shaped like Cognito's client_credentials access tokens.
//!
//! Built with the `test-issuer` feature (and in this crate's own tests). Keys are generated
//! at run time; none is ever written to the repository.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use rsa::pkcs8::EncodePrivateKey;
use rsa::traits::PublicKeyParts;
use serde_json::{json, Value};

pub struct TestIssuer {
    pub issuer: String,
    /// The `kid` of the RSA key (RS256 and PS256) and of the EC key (ES256).
    pub rsa_kid: String,
    pub ec_kid: String,
    rsa: RsaKeyPair,
    rsa_jwk: Value,
    ec: EcdsaKeyPair,
    ec_jwk: Value,
    rng: SystemRandom,
}

impl TestIssuer {
    /// An issuer (`iss`) with new keys; `kid_prefix` keeps several issuers' kids apart.
    pub fn new(issuer: &str, kid_prefix: &str) -> Self {
        let rng = SystemRandom::new();
        let mut os = rsa::rand_core::OsRng;
        let private = rsa::RsaPrivateKey::new(&mut os, 2048).expect("RSA key generation");
        let der = private.to_pkcs8_der().expect("PKCS#8 encoding");
        let rsa = RsaKeyPair::from_pkcs8(der.as_bytes()).expect("ring reads the RSA key");
        let rsa_kid = format!("{kid_prefix}-rsa");
        let rsa_jwk = json!({
            "kty": "RSA", "kid": rsa_kid, "use": "sig",
            "n": URL_SAFE_NO_PAD.encode(private.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(private.e().to_bytes_be()),
        });
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("EC key generation");
        let ec = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).expect("EC key");
        let point = ec.public_key().as_ref();
        let ec_kid = format!("{kid_prefix}-ec");
        let ec_jwk = json!({
            "kty": "EC", "kid": ec_kid, "use": "sig", "crv": "P-256", "alg": "ES256",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        });
        TestIssuer {
            issuer: issuer.to_string(),
            rsa_kid,
            ec_kid,
            rsa,
            rsa_jwk,
            ec,
            ec_jwk,
            rng,
        }
    }

    /// The JWK set document, as a JWKS endpoint serves it.
    pub fn jwks(&self) -> String {
        json!({ "keys": [self.rsa_jwk, self.ec_jwk] }).to_string()
    }

    /// The JWK set with only the RSA key.
    pub fn jwks_rsa_only(&self) -> String {
        json!({ "keys": [self.rsa_jwk] }).to_string()
    }

    /// Claims of a Cognito client_credentials access token valid from `now` for an hour.
    pub fn access_claims(&self, client_id: &str, scope: &str, now: u64) -> Value {
        json!({
            "sub": client_id, "client_id": client_id, "token_use": "access",
            "scope": scope, "iss": self.issuer, "version": 2,
            "auth_time": now, "iat": now, "exp": now + 3600,
            "jti": format!("{client_id}-{now}"),
        })
    }

    /// Signs `claims` with `alg` (RS256, PS256 or ES256) and the matching key.
    pub fn sign(&self, alg: &str, claims: &Value) -> String {
        let kid = if alg == "ES256" {
            &self.ec_kid
        } else {
            &self.rsa_kid
        };
        self.sign_with_header(&json!({ "alg": alg, "kid": kid, "typ": "JWT" }), claims)
    }

    /// Signs with any header, using the key its `alg` calls for (RSA for anything but
    /// ES256): what a forger can produce, minus the key.
    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> String {
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = match header["alg"].as_str() {
            Some("ES256") => self
                .ec
                .sign(&self.rng, signed.as_bytes())
                .expect("EC signing")
                .as_ref()
                .to_vec(),
            Some(alg) => {
                let padding: &dyn signature::RsaEncoding = if alg == "PS256" {
                    &signature::RSA_PSS_SHA256
                } else {
                    &signature::RSA_PKCS1_SHA256
                };
                let mut sig = vec![0; self.rsa.public().modulus_len()];
                self.rsa
                    .sign(padding, &self.rng, signed.as_bytes(), &mut sig)
                    .expect("RSA signing");
                sig
            }
            None => Vec::new(),
        };
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig))
    }
}
