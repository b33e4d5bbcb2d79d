//! Secrets sources. Values are read when the rules load and never logged: errors name the
//! secret and where it was looked for, never what was found.

use std::path::PathBuf;

use rampart_plugins::SecretValues;
use thiserror::Error;

use crate::config::SecretSpec;

/// Values that mean "not set yet" (the seed initialises secrets with `REPLACE_ME`).
const PLACEHOLDERS: &[&str] = &["REPLACE_ME", "CHANGE_ME", "changeme"];

#[derive(Debug, Error)]
pub enum SecretError {
    #[error("secret {secret:?}: cannot read {path}: {reason}")]
    File {
        secret: String,
        path: PathBuf,
        reason: String,
    },
}

/// Somewhere a secret's values can be read from. AWS Secrets Manager implements it too.
pub trait SecretSource: Send + Sync {
    fn fetch(&self, secret: &str) -> Result<Vec<Vec<u8>>, SecretError>;
}

/// One value from an environment variable; an unset variable contributes nothing.
pub struct EnvSource(pub String);

impl SecretSource for EnvSource {
    fn fetch(&self, _secret: &str) -> Result<Vec<Vec<u8>>, SecretError> {
        Ok(std::env::var_os(&self.0)
            .map(|v| v.into_encoded_bytes())
            .into_iter()
            .collect())
    }
}

/// One value per line of a file.
pub struct FileSource(pub PathBuf);

impl SecretSource for FileSource {
    fn fetch(&self, secret: &str) -> Result<Vec<Vec<u8>>, SecretError> {
        let text = std::fs::read_to_string(&self.0).map_err(|e| SecretError::File {
            secret: secret.to_string(),
            path: self.0.clone(),
            reason: e.kind().to_string(),
        })?;
        Ok(text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| l.as_bytes().to_vec())
            .collect())
    }
}

pub fn sources(spec: &SecretSpec) -> Vec<Box<dyn SecretSource>> {
    let mut out: Vec<Box<dyn SecretSource>> = Vec::new();
    for var in &spec.env {
        out.push(Box::new(EnvSource(var.clone())));
    }
    if let Some(file) = &spec.file {
        out.push(Box::new(FileSource(file.clone())));
    }
    out
}

/// Reads every source of a secret; placeholder and empty values are dropped, so a secret
/// left at `REPLACE_ME` has no usable value and a plugin that needs it refuses to build.
pub fn resolve(name: &str, spec: &SecretSpec) -> Result<SecretValues, SecretError> {
    let mut values = Vec::new();
    for source in sources(spec) {
        values.extend(source.fetch(name)?);
    }
    Ok(usable(values))
}

/// The values that may serve as a secret: placeholders and empty values are dropped.
pub fn usable(mut values: Vec<Vec<u8>>) -> SecretValues {
    values.retain(|v| !PLACEHOLDERS.iter().any(|p| v.as_slice() == p.as_bytes()));
    SecretValues::new(values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn file_holds_several_values_and_placeholders_are_dropped() {
        let mut f = tempfile::NamedTempFile::new().expect("tmp");
        writeln!(
            f,
            "# rotation in progress\nold-value\n\nnew-value\nREPLACE_ME"
        )
        .expect("write");
        let spec = SecretSpec {
            env: vec![],
            file: Some(f.path().to_path_buf()),
            aws: None,
        };
        let v = resolve("origin", &spec).expect("reads");
        assert_eq!(v.len(), 2);
        assert!(v.matches(b"old-value") && v.matches(b"new-value"));
        assert!(!v.matches(b"REPLACE_ME"));
    }

    #[test]
    fn missing_file_error_names_the_secret_not_a_value() {
        let spec = SecretSpec {
            env: vec![],
            file: Some("/nonexistent/rampart-secret".into()),
            aws: None,
        };
        let e = resolve("admin-header", &spec)
            .expect_err("missing")
            .to_string();
        assert!(
            e.contains("admin-header") && e.contains("/nonexistent/rampart-secret"),
            "{e}"
        );
    }

    #[test]
    fn unset_env_gives_no_value() {
        let spec = SecretSpec {
            env: vec!["RAMPART_TEST_SURELY_UNSET_VAR".into()],
            file: None,
            aws: None,
        };
        assert!(resolve("x", &spec).expect("ok").is_empty());
    }
}
