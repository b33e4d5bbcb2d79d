//! `admin_secret`: the `X-Admin-Secret` header on admin paths.
//!
//! Paths are matched on the normalised path, case-insensitively and segment-wise, so that
//! `/KEY/x`, `//key/x`, `/%6bey/x` and `/v1/../key/x` all meet the rule for `/key/`.

use http::HeaderName;
use serde::Deserialize;

use crate::path::has_segment_prefix;
use crate::registry::{BuildContext, BuildError};
use crate::secret::{SecretHeader, SecretPresence};
use crate::{Deny, Finding, Plugin, RequestView, Verdict};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSecretConfig {
    /// Name of the secret (in `[secrets]`) the header must carry.
    pub secret: String,
    #[serde(default = "default_header")]
    pub header: String,
    /// Path prefixes that need the header.
    #[serde(default = "default_paths")]
    pub paths: Vec<String>,
}

fn default_header() -> String {
    "x-admin-secret".to_string()
}

fn default_paths() -> Vec<String> {
    ["/key/", "/user/", "/model/", "/spend/"]
        .map(String::from)
        .to_vec()
}

pub struct AdminSecret {
    header: SecretHeader,
    paths: Vec<String>,
    consumed: [HeaderName; 1],
}

impl AdminSecret {
    pub fn build(config: AdminSecretConfig, ctx: &dyn BuildContext) -> Result<Self, BuildError> {
        let header = HeaderName::from_bytes(config.header.as_bytes()).map_err(|_| {
            BuildError::invalid("admin_secret", "`header` is not a valid header name")
        })?;
        if let Some(bad) = config.paths.iter().find(|p| !p.starts_with('/')) {
            return Err(BuildError::invalid(
                "admin_secret",
                &format!("path {bad:?} does not start with '/'"),
            ));
        }
        Ok(AdminSecret {
            consumed: [header.clone()],
            header: SecretHeader {
                header,
                secret: ctx.secret(&config.secret)?,
            },
            paths: config.paths,
        })
    }

    fn covers(&self, path: &str) -> bool {
        self.paths.iter().any(|p| has_segment_prefix(path, p, true))
    }
}

impl Plugin for AdminSecret {
    fn name(&self) -> &'static str {
        "admin_secret"
    }

    fn check_reporting(
        &self,
        req: &RequestView<'_>,
        _report: &mut dyn FnMut(&Finding<'_>),
    ) -> Verdict {
        if !self.covers(req.path) {
            return Verdict::Continue;
        }
        match self.header.check(req.headers) {
            SecretPresence::Valid => Verdict::Continue,
            SecretPresence::Missing => Verdict::Deny(Deny::new(403, "admin_secret.missing")),
            SecretPresence::Invalid => Verdict::Deny(Deny::new(403, "admin_secret.invalid")),
        }
    }

    fn consumed_headers(&self) -> &[HeaderName] {
        &self.consumed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::path::normalize;
    use crate::plugins::testing::TestRequest;
    use crate::registry::tests::TestContext;

    fn plugin() -> AdminSecret {
        let config = AdminSecretConfig {
            secret: "admin".into(),
            header: default_header(),
            paths: default_paths(),
        };
        AdminSecret::build(config, &TestContext::new()).expect("builds")
    }

    fn denied(raw_path: &str, secret: Option<&str>) -> bool {
        let path = normalize(raw_path).expect("valid path").into_owned();
        let mut req = TestRequest::new("203.0.113.5", &path);
        if let Some(s) = secret {
            req = req.header("X-Admin-Secret", s);
        }
        matches!(plugin().check(&req.view()), Verdict::Deny(_))
    }

    #[test]
    fn admin_paths_need_the_secret() {
        for p in [
            "/key/generate",
            "/user/new",
            "/model/info",
            "/spend/logs",
            "/key",
        ] {
            assert!(denied(p, None), "{p} without secret");
            assert!(denied(p, Some("wrong")), "{p} with wrong secret");
            assert!(!denied(p, Some("s3cret-admin")), "{p} with secret");
        }
    }

    #[test]
    fn bypass_spellings_are_admin_paths() {
        for p in [
            "/KEY/x",
            "//key/x",
            "/%6bey/x",
            "/v1/../key/x",
            "/Spend/../spend/x",
            "/%2575ser/new",
        ] {
            assert!(denied(p, None), "{p}");
        }
    }

    #[test]
    fn other_paths_are_untouched() {
        for p in [
            "/v1/chat/completions",
            "/health/liveliness",
            "/keyring",
            "/grafana/key/x",
            "/v1/models",
        ] {
            assert!(!denied(p, None), "{p}");
        }
    }
}
