//! AWS Secrets Manager as a secrets source, refreshed in the background.
//!
//! A secret is read when the rules first name it: then a failure stops the start (or the
//! reload) with a message naming the secret. Afterwards a task re-reads it every
//! `refresh_seconds` and updates the values in place; a failed read keeps the last good
//! values and is counted in `rampart_secret_refreshes_total{result="failure"}`.
//!
//! Both the `AWSCURRENT` and the `AWSPREVIOUS` version are valid when `previous` is set, so
//! that a rotation never locks out CloudFront or an admin who still sends the old value.
//! The current value comes first (an upstream key uses the first value).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use aws_sdk_secretsmanager::error::ProvideErrorMetadata;
use aws_sdk_secretsmanager::Client;
use prometheus::IntCounterVec;
use rampart_plugins::{SecretValues, SharedSecret};

use crate::config::{AwsSecretSpec, SecretsManagerConfig};
use crate::secrets::usable;

/// One Secrets Manager call may take this long; the first read of all waits twice as long.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The client, its runtime (one worker thread, named `secrets`), and the secrets it keeps
/// fresh, by name.
pub struct AwsSecrets {
    pub config: SecretsManagerConfig,
    runtime: tokio::runtime::Runtime,
    client: Client,
    kept: Mutex<HashMap<String, Kept>>,
    refreshes: Option<IntCounterVec>,
}

/// A secret being kept fresh, with the settings it was read with.
struct Kept {
    spec: AwsSecretSpec,
    secret: SharedSecret,
    refresher: tokio::task::JoinHandle<()>,
}

impl AwsSecrets {
    pub fn new(
        config: SecretsManagerConfig,
        refreshes: Option<IntCounterVec>,
    ) -> Result<Self, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("secrets")
            .enable_all()
            .build()
            .map_err(|e| format!("Secrets Manager runtime: {e}"))?;
        let settings = config.clone();
        let client = wait(&runtime, CALL_TIMEOUT * 2, async move {
            let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
            if let Some(region) = settings.region {
                loader = loader.region(aws_config::Region::new(region));
            }
            if let Some(endpoint) = settings.endpoint_url {
                loader = loader.endpoint_url(endpoint);
            }
            Ok(Client::new(&loader.load().await))
        })
        .map_err(|e| format!("Secrets Manager client: {e}"))?;
        Ok(AwsSecrets {
            config,
            runtime,
            client,
            kept: Mutex::default(),
            refreshes,
        })
    }

    /// The secret `name`, read now if it is new (or its settings changed), then kept fresh.
    /// A secret that is not `required` (a provider's key: only its provider's requests need
    /// it) may start without a value; the refresh fills it in once one is set.
    pub fn secret(
        &self,
        name: &str,
        spec: &AwsSecretSpec,
        required: bool,
    ) -> Result<SharedSecret, String> {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = kept.get(name).filter(|k| k.spec == *spec) {
            return Ok(k.secret.clone());
        }
        let (client, spec_c) = (self.client.clone(), spec.clone());
        let read = wait(&self.runtime, CALL_TIMEOUT * 2, async move {
            read(&client, &spec_c).await
        })
        .map_err(|e| format!("secret {name:?} ({}): {e}", spec.secret_id));
        let values = match read {
            Ok(values) => values,
            Err(e) if !required => {
                log::warn!("{e}; requests that need it are refused until a refresh finds a value");
                SecretValues::default()
            }
            Err(e) => return Err(e),
        };
        let secret = SharedSecret::new(name, values);
        let refresher = self.runtime.spawn(refresh(
            self.client.clone(),
            spec.clone(),
            secret.clone(),
            Duration::from_secs(self.config.refresh_seconds.max(1)),
            self.refreshes.clone(),
        ));
        let fresh = Kept {
            spec: spec.clone(),
            secret: secret.clone(),
            refresher,
        };
        // The same name with other settings: its refresher stops.
        if let Some(old) = kept.insert(name.to_string(), fresh) {
            old.refresher.abort();
        }
        Ok(secret)
    }
}

impl Drop for AwsSecrets {
    fn drop(&mut self) {
        if let Ok(kept) = self.kept.get_mut() {
            for k in kept.values() {
                k.refresher.abort();
            }
        }
    }
}

/// Runs `fut` on `runtime` and waits for it from this thread, which may be any thread
/// (the main thread at start, a blocking task on a reload).
fn wait<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T, String>> + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    runtime.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv_timeout(limit)
        .map_err(|_| format!("no answer within {} s", limit.as_secs()))?
}

/// The usable values of a secret: `AWSCURRENT`, then `AWSPREVIOUS` when asked for and it
/// exists. Placeholders (`REPLACE_ME`) and empty values are dropped; none left is an error.
async fn read(client: &Client, spec: &AwsSecretSpec) -> Result<SecretValues, String> {
    let mut values = Vec::new();
    let stages: &[&str] = if spec.previous {
        &["AWSCURRENT", "AWSPREVIOUS"]
    } else {
        &["AWSCURRENT"]
    };
    for stage in stages {
        let call = client
            .get_secret_value()
            .secret_id(&spec.secret_id)
            .version_stage(*stage)
            .send();
        let out = match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Err(_) => {
                return Err(format!(
                    "{stage}: no answer within {} s",
                    CALL_TIMEOUT.as_secs()
                ))
            }
            Ok(Ok(out)) => out,
            // A secret never rotated has no previous version.
            Ok(Err(e))
                if *stage == "AWSPREVIOUS" && e.code() == Some("ResourceNotFoundException") =>
            {
                continue
            }
            Ok(Err(e)) => {
                let code = e.code().unwrap_or("unreachable").to_string();
                let message = e.message().map(|m| format!(": {m}")).unwrap_or_default();
                return Err(format!("{stage}: {code}{message}"));
            }
        };
        let raw = match (out.secret_string(), out.secret_binary()) {
            (Some(s), _) => s.as_bytes().to_vec(),
            (None, Some(b)) => b.as_ref().to_vec(),
            (None, None) => continue,
        };
        let value = match &spec.json_key {
            None => raw,
            Some(field) => serde_json::from_slice::<serde_json::Value>(&raw)
                .ok()
                .and_then(|v| {
                    v.get(field)
                        .and_then(|f| f.as_str())
                        .map(|s| s.as_bytes().to_vec())
                })
                .ok_or_else(|| format!("{stage}: not a JSON object with a string {field:?}"))?,
        };
        values.push(value);
    }
    let values = usable(values);
    if values.is_empty() {
        return Err("no usable value (empty or a placeholder such as REPLACE_ME)".into());
    }
    Ok(values)
}

async fn refresh(
    client: Client,
    spec: AwsSecretSpec,
    secret: SharedSecret,
    every: Duration,
    counter: Option<IntCounterVec>,
) {
    let count = |result: &str| {
        if let Some(c) = &counter {
            c.with_label_values(&[result]).inc();
        }
    };
    loop {
        tokio::time::sleep(every).await;
        match read(&client, &spec).await {
            Ok(values) => {
                if *secret.load() != values {
                    log::info!(
                        "secret {:?}: new values from Secrets Manager",
                        secret.name()
                    );
                }
                secret.store(values);
                count("success");
            }
            Err(e) => {
                log::warn!(
                    "secret {:?}: refresh failed, keeping the last values: {e}",
                    secret.name()
                );
                count("failure");
            }
        }
    }
}
