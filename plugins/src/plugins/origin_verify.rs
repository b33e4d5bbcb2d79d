//! `origin_verify`: the listener access policy of the seed's ALB.
//!
//! A request passes when its socket peer is in the internal networks (if `internal` is
//! accepted) or when it carries the CDN's shared secret header (if `header` is accepted).
//! The internal test never looks at `X-Forwarded-For`: a client can write that header.

use http::HeaderName;
use serde::Deserialize;

use crate::net::NetSet;
use crate::registry::{BuildContext, BuildError};
use crate::secret::{SecretHeader, SecretPresence};
use crate::{Deny, Finding, Plugin, RequestView, Verdict};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accept {
    /// The shared secret header, as a CDN adds it.
    Header,
    /// A socket peer inside the configured internal networks.
    Internal,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OriginVerifyConfig {
    /// What lets a request in; at least one.
    pub accept: Vec<Accept>,
    /// Name of the secret (in `[secrets]`) the header must carry; required with `header`.
    pub secret: Option<String>,
    #[serde(default = "default_header")]
    pub header: String,
}

fn default_header() -> String {
    "x-origin-verify".to_string()
}

pub struct OriginVerify {
    header: Option<SecretHeader>,
    internal: Option<NetSet>,
    consumed: Vec<HeaderName>,
}

impl OriginVerify {
    pub fn build(config: OriginVerifyConfig, ctx: &dyn BuildContext) -> Result<Self, BuildError> {
        let invalid = |reason: &str| BuildError::invalid("origin_verify", reason);
        if config.accept.is_empty() {
            return Err(invalid("`accept` must list `header`, `internal` or both"));
        }
        let header = if config.accept.contains(&Accept::Header) {
            let name = config
                .secret
                .as_deref()
                .ok_or_else(|| invalid("`accept = [\"header\"]` needs `secret`"))?;
            Some(SecretHeader {
                header: HeaderName::from_bytes(config.header.as_bytes())
                    .map_err(|_| invalid("`header` is not a valid header name"))?,
                secret: ctx.secret(name)?,
            })
        } else if config.secret.is_some() {
            return Err(invalid(
                "`secret` is set but `accept` does not list `header`",
            ));
        } else {
            None
        };
        let internal = config
            .accept
            .contains(&Accept::Internal)
            .then(|| ctx.internal_networks().clone());
        // The header is consumed even when only internal peers are accepted: the secret
        // must never travel upstream, whoever sent it.
        let consumed = vec![header
            .as_ref()
            .map(|h| h.header.clone())
            .unwrap_or_else(|| HeaderName::from_static("x-origin-verify"))];
        Ok(OriginVerify {
            header,
            internal,
            consumed,
        })
    }
}

impl Plugin for OriginVerify {
    fn name(&self) -> &'static str {
        "origin_verify"
    }

    fn check_reporting(
        &self,
        req: &RequestView<'_>,
        _report: &mut dyn FnMut(&Finding<'_>),
    ) -> Verdict {
        if self.internal.as_ref().is_some_and(|n| n.contains(req.peer)) {
            return Verdict::Continue;
        }
        let Some(header) = &self.header else {
            return Verdict::Deny(Deny::new(403, "origin_verify.not_internal"));
        };
        match header.check(req.headers) {
            SecretPresence::Valid => Verdict::Continue,
            SecretPresence::Missing => Verdict::Deny(Deny::new(403, "origin_verify.missing")),
            SecretPresence::Invalid => Verdict::Deny(Deny::new(403, "origin_verify.invalid")),
        }
    }

    fn consumed_headers(&self) -> &[HeaderName] {
        &self.consumed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testing::TestRequest;
    use crate::registry::tests::TestContext;

    fn plugin(accept: &[Accept]) -> OriginVerify {
        let config = OriginVerifyConfig {
            accept: accept.to_vec(),
            secret: accept
                .contains(&Accept::Header)
                .then(|| "origin".to_string()),
            header: default_header(),
        };
        OriginVerify::build(config, &TestContext::new()).expect("builds")
    }

    fn status(p: &OriginVerify, req: &TestRequest) -> Option<String> {
        match p.check(&req.view()) {
            Verdict::Continue | Verdict::Authenticated(_) => None,
            Verdict::Deny(d) => Some(format!("{} {}", d.status, d.rule)),
        }
    }

    #[test]
    fn header_only_listener() {
        let p = plugin(&[Accept::Header]);
        let ext = "203.0.113.5";
        assert_eq!(
            status(&p, &TestRequest::new(ext, "/")),
            Some("403 origin_verify.missing".into())
        );
        assert_eq!(
            status(
                &p,
                &TestRequest::new(ext, "/").header("X-Origin-Verify", "wrong")
            ),
            Some("403 origin_verify.invalid".into())
        );
        assert_eq!(
            status(
                &p,
                &TestRequest::new(ext, "/").header("X-Origin-Verify", "s3cret-origin")
            ),
            None
        );
        assert_eq!(
            status(&p, &TestRequest::new("10.20.1.1", "/")),
            Some("403 origin_verify.missing".into()),
            "internal peers are not enough when only the header is accepted"
        );
    }

    #[test]
    fn header_or_internal_listener() {
        let p = plugin(&[Accept::Header, Accept::Internal]);
        assert_eq!(status(&p, &TestRequest::new("10.20.1.1", "/")), None);
        assert_eq!(status(&p, &TestRequest::new("::ffff:10.20.1.1", "/")), None);
        assert_eq!(
            status(
                &p,
                &TestRequest::new("203.0.113.5", "/").header("X-Origin-Verify", "s3cret-origin")
            ),
            None
        );
        assert!(status(&p, &TestRequest::new("203.0.113.5", "/")).is_some());
        assert!(
            status(
                &p,
                &TestRequest::new("203.0.113.5", "/").header("X-Forwarded-For", "10.20.1.1")
            )
            .is_some(),
            "XFF never makes a peer internal"
        );
    }

    #[test]
    fn internal_only_listener_refuses_even_the_header() {
        let p = plugin(&[Accept::Internal]);
        assert_eq!(status(&p, &TestRequest::new("10.20.200.1", "/")), None);
        assert_eq!(
            status(
                &p,
                &TestRequest::new("203.0.113.5", "/").header("X-Origin-Verify", "s3cret-origin")
            ),
            Some("403 origin_verify.not_internal".into())
        );
        assert_eq!(
            p.consumed_headers(),
            [HeaderName::from_static("x-origin-verify")]
        );
    }

    #[test]
    fn repeated_header_is_refused() {
        let p = plugin(&[Accept::Header]);
        let req = TestRequest::new("203.0.113.5", "/")
            .header("X-Origin-Verify", "s3cret-origin")
            .header("X-Origin-Verify", "s3cret-origin");
        assert_eq!(status(&p, &req), Some("403 origin_verify.invalid".into()));
    }

    #[test]
    fn config_mistakes_are_errors() {
        let ctx = TestContext::new();
        let err = |accept: Vec<Accept>, secret: Option<&str>| {
            OriginVerify::build(
                OriginVerifyConfig {
                    accept,
                    secret: secret.map(str::to_string),
                    header: default_header(),
                },
                &ctx,
            )
            .err()
            .map(|e| e.to_string())
        };
        assert!(err(vec![], None).is_some());
        assert!(err(vec![Accept::Header], None).is_some());
        assert!(err(vec![Accept::Internal], Some("origin")).is_some());
        assert!(err(vec![Accept::Header], Some("nope"))
            .unwrap_or_default()
            .contains("nope"));
    }
}
