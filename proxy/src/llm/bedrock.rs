//! Bedrock targets: AWS credentials from the standard chain, and each request signed with
//! SigV4 (service `bedrock`) in place of a provider key.
//!
//! The chain is the AWS SDK's (environment, shared profile, web identity, the ECS task role,
//! the EC2 instance role), set up at the first Bedrock call. Credentials are kept until five
//! minutes before they expire (temporary ones, from a role) or for five minutes (static
//! ones), then fetched again, so a rotated role is picked up without a restart.

use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4::SigningParams;
use aws_smithy_runtime_api::client::identity::Identity;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use tokio::sync::{Mutex, OnceCell};

/// The service name Bedrock's runtime signs with.
const SERVICE: &str = "bedrock";
/// Credentials are fetched again this long before they expire, and at least this often.
const FRESHNESS: Duration = Duration::from_secs(300);
/// The chain may ask the ECS or EC2 metadata endpoint; it is not waited on longer.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a Bedrock call could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("no AWS credentials: {0}")]
    NoCredentials(String),
    #[error("AWS credentials took more than {0:?}")]
    Timeout(Duration),
    #[error("cannot sign the request: {0}")]
    Sign(String),
}

/// The process's AWS credentials, for signing.
#[derive(Default)]
pub struct AwsCredentials {
    chain: OnceCell<Option<SharedCredentialsProvider>>,
    kept: Mutex<Option<(Credentials, SystemTime)>>,
}

impl AwsCredentials {
    /// Credentials valid for at least a few more minutes.
    pub async fn current(&self) -> Result<Credentials, SigningError> {
        let mut kept = self.kept.lock().await;
        let now = SystemTime::now();
        if let Some((credentials, fetched)) = kept.as_ref() {
            let young = now.duration_since(*fetched).unwrap_or_default() < FRESHNESS;
            let lasting = credentials
                .expiry()
                .is_none_or(|e| e.duration_since(now).unwrap_or_default() > FRESHNESS);
            if young && lasting {
                return Ok(credentials.clone());
            }
        }
        let chain = self
            .chain
            .get_or_init(|| async {
                aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .load()
                    .await
                    .credentials_provider()
            })
            .await
            .as_ref()
            .ok_or_else(|| SigningError::NoCredentials("no credential chain".into()))?;
        let fetched = tokio::time::timeout(FETCH_TIMEOUT, chain.provide_credentials())
            .await
            .map_err(|_| SigningError::Timeout(FETCH_TIMEOUT))?
            .map_err(|e| SigningError::NoCredentials(e.to_string()))?;
        *kept = Some((fetched.clone(), now));
        Ok(fetched)
    }
}

/// Adds the SigV4 headers (`authorization`, `x-amz-date`, and `x-amz-security-token` for
/// temporary credentials) for a POST of `body` to `url` with `headers` (which are signed
/// too, so they must be sent as given).
pub fn sign_request(
    url: &str,
    body: &[u8],
    region: &str,
    credentials: Credentials,
    headers: &mut HeaderMap,
) -> Result<(), SigningError> {
    let identity = Identity::from(credentials);
    let params = SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SERVICE)
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| SigningError::Sign(e.to_string()))?
        .into();
    let signed: Vec<(String, String)> = headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let request = SignableRequest::new(
        "POST",
        url,
        signed.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        SignableBody::Bytes(body),
    )
    .map_err(|e| SigningError::Sign(e.to_string()))?;
    let (instructions, _signature) = sign(request, &params)
        .map_err(|e| SigningError::Sign(e.to_string()))?
        .into_parts();
    for (name, value) in instructions.headers() {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| SigningError::Sign(e.to_string()))?;
        let mut value =
            HeaderValue::from_str(value).map_err(|e| SigningError::Sign(e.to_string()))?;
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_gets_a_signature_over_its_headers_and_body() {
        let credentials =
            Credentials::new("AKIDEXAMPLE", "secret", Some("token".into()), None, "test");
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        sign_request(
            "https://bedrock-runtime.us-east-1.amazonaws.com/model/m%3A0/converse",
            b"{}",
            "us-east-1",
            credentials,
            &mut headers,
        )
        .expect("signs");
        let auth = headers["authorization"].to_str().expect("ascii");
        assert!(
            auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"),
            "{auth}"
        );
        assert!(auth.contains("/us-east-1/bedrock/aws4_request"), "{auth}");
        assert!(
            auth.contains("SignedHeaders=content-type;host;x-amz-date;x-amz-security-token"),
            "{auth}"
        );
        assert!(headers.contains_key("x-amz-date"));
        assert_eq!(headers["x-amz-security-token"], "token");
    }
}
