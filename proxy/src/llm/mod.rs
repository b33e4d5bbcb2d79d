//! Routes to LLM providers: OpenAI-style endpoints routed by the body's `model` through the
//! model table, and native pass-through routes to one provider.
//!
//! Pingora replays a request body to an upstream only from its 64 KiB retry buffer, and a
//! prompt is often larger, so provider calls do not take Pingora's proxy path: the body is
//! read (bounded) and judged first, then sent with rampart's own pooled HTTP client, once
//! per target until one answers. Failover ends when the first byte of an answer has gone to
//! the client; from then on the answer streams through chunk by chunk as it arrives.
//!
//! Token budgets are charged as the answer streams (see [`metering`]): a stream that spends
//! its caller's budget ends at the next event boundary with a final error event.
//!
//! Bedrock targets take the same way with two differences: the request is translated to
//! Bedrock's Converse API and signed with AWS credentials (see [`bedrock`]), and the answer
//! is translated back to OpenAI's shape, a stream from AWS's event-stream framing to
//! server-sent events.

mod bedrock;
pub mod cooldown;
mod metering;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use pingora_core::{Error, ErrorType, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use rampart_plugins::bedrock as bedrock_api;
use rampart_plugins::llm_request::LlmRequest;
use rampart_plugins::llm_usage::{usage_of_json, SseUsage, Usage};
use rampart_plugins::models::{Endpoint, KeyFormat, ModelTable, Provider, ProviderKind};
use rampart_plugins::rate_window::{now_ms, SharedWindows};
use rampart_plugins::token_budget::{BudgetRefusal, Caller, Tab, TokenBudget};
use rampart_plugins::SharedSecret;

use crate::config::LlmConfig;
use crate::header_names::{self, CONNECTION_AND_FRAMING, CREDENTIALS, FORWARDING, HOP_BY_HOP};
use crate::metrics::Metrics;
use crate::proxy::write_json;
use crate::redis_windows::RedisWindows;
use cooldown::{CooldownPolicy, Cooldowns};
use metering::{EventEdges, Meter};

pub use bedrock::AwsCredentials;

/// Everything provider routes need, built with the rules snapshot.
pub struct LlmRules {
    pub settings: LlmConfig,
    pub table: ModelTable,
    /// Each provider's key, by provider name; refreshed in place by the secrets sources.
    pub keys: HashMap<String, SharedSecret>,
    pub budget: TokenBudget,
    pub client: reqwest::Client,
    pub cooldowns: Arc<Cooldowns>,
    /// The shared store, where budgets count and cooldowns are published.
    pub store: Option<Arc<RedisWindows>>,
    /// AWS credentials for Bedrock targets, set up at their first call.
    pub aws: Arc<AwsCredentials>,
}

/// Where a provider route sends a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LlmTarget {
    /// OpenAI-style endpoints, by the body's `model`.
    ByModel,
    /// One provider's own API, the path below the route's prefix passed on.
    Native(String),
}

/// One request through a provider route.
pub struct Exchange<'a> {
    pub rules: &'a LlmRules,
    pub metrics: &'a Metrics,
    pub target: &'a LlmTarget,
    /// The path below the route's prefix (`/chat/completions`).
    pub rest: &'a str,
    /// The route's prefix (`/v1/`), for messages that name a path.
    pub prefix: &'a str,
    pub caller: Caller<'a>,
    /// Headers plugins consumed (credentials for rampart), never sent on.
    pub consumed: &'a [HeaderName],
    pub start: Instant,
}

/// What became of the request, for the access log and the proxy's metrics.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The provider that answered (or was tried last).
    pub provider: Option<String>,
    /// Why rampart answered itself, when it did.
    pub refused: Option<Cow<'static, str>>,
    pub upstream_error: Option<&'static str>,
    pub usage: Option<Usage>,
    /// An answer that used tokens reached the client: the admission's estimate stands until
    /// its usage replaces it. Otherwise the estimate is taken back.
    pub answered: bool,
}

/// An answer in OpenAI's error shape, which the OpenAI SDKs turn into their exceptions.
fn openai_error(kind: &str, code: &str, message: &str) -> Bytes {
    Bytes::from(rampart_plugins::llm_request::openai_error(kind, code, message).to_string())
}

/// What a target is: its provider, where to send, what to send, and how it is labelled.
struct Attempt<'a> {
    provider_name: &'a str,
    provider: &'a Provider,
    native: bool,
    url: String,
    body: Bytes,
    /// Cooldown key: the provider and what it serves the request with.
    target_id: String,
    /// Bounded metrics label: the model table's entry name, or `native`.
    model_label: &'a str,
    /// Bedrock's region, for a request signed instead of carrying a key.
    signing_region: Option<&'a str>,
    translate: Translate,
    /// The model the client asked for, named in a translated answer.
    answer_model: String,
}

/// Whether an answer is the provider's own or translated to OpenAI's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Translate {
    None,
    /// A Converse answer, whole.
    BedrockWhole,
    /// A ConverseStream answer, in AWS's event-stream framing.
    BedrockStream,
}

/// Why a target did not answer.
enum Failure {
    /// No usable key: nothing was sent.
    KeyMissing { provider: String },
    /// No AWS credentials to sign with: nothing was sent.
    Unsigned { provider: String, why: String },
    /// Connect, TLS or timeout before any answer, or an answer that broke before its first
    /// byte: kind for the metrics, and the status the client gets if no target answers.
    Transport { kind: &'static str, status: u16 },
    /// The provider answered 429 or 5xx; relayed as is if no target answers.
    Answered {
        status: u16,
        headers: HeaderMap,
        body: Bytes,
    },
}

/// Whether a client's request header stays behind: connection and framing headers, the
/// client's own credentials (the provider gets its key from rampart), forwarding headers,
/// rampart's own, `Accept-Encoding` (the answer is read for its usage, so it must come
/// uncompressed) and `Content-Encoding` (a compressed request body was decoded).
fn not_forwarded(name: &http::HeaderName) -> bool {
    let name = name.as_str();
    HOP_BY_HOP.contains(&name)
        || CONNECTION_AND_FRAMING.contains(&name)
        || CREDENTIALS.contains(&name)
        || FORWARDING.contains(&name)
        || name == "accept-encoding"
        || name == "content-encoding"
        || header_names::is_rampart_own(name)
}

/// An error answer of a provider is read up to this much, to be relayed if no target answers.
const ERROR_BODY_LIMIT: usize = 64 * 1024;
/// A non-streamed answer is kept up to this much to read its usage; it streams on regardless.
const USAGE_BODY_LIMIT: usize = 4 << 20;

impl LlmRules {
    pub fn policy(&self) -> CooldownPolicy {
        CooldownPolicy {
            after_failures: self.settings.cooldown_after_failures,
            rest: Duration::from_secs(self.settings.cooldown_seconds),
        }
    }

    /// The provider's current key, as its header value; `None` when it has no usable one.
    fn key_header(
        &self,
        name: &str,
        provider: &Provider,
        native: bool,
    ) -> Option<(HeaderName, HeaderValue)> {
        let values = self.keys.get(name)?.load();
        let key = values.first()?;
        let (header, format) = if native {
            provider.kind.native_key_header()
        } else {
            provider.kind.key_header()
        };
        let mut value = match format {
            KeyFormat::Bearer => {
                let mut v = b"Bearer ".to_vec();
                v.extend_from_slice(key);
                HeaderValue::from_bytes(&v).ok()?
            }
            KeyFormat::Plain => HeaderValue::from_bytes(key).ok()?,
        };
        value.set_sensitive(true);
        Some((HeaderName::from_static(header), value))
    }
}

/// Serves one request whose body has been read and judged: admitted by the caller's token
/// budgets on an estimate of its prompt, which the answer's usage later corrects.
pub async fn serve(
    session: &mut Session,
    ex: Exchange<'_>,
    body: Bytes,
    outcome: &mut Outcome,
) -> Result<()> {
    let budget = &ex.rules.budget;
    let mut tab = budget.tab(ex.caller);
    if let Err(refusal) = budget
        .admit(&mut tab, metering::prompt_estimate(&body))
        .await
    {
        return refuse_budget(session, refusal, outcome).await;
    }
    let served = serve_admitted(session, &ex, body, outcome, &mut tab).await;
    if !outcome.answered {
        // Nothing was generated: the estimate comes back.
        let _ = budget.settle(&mut tab, 0).await;
    }
    served
}

async fn refuse_budget(
    session: &mut Session,
    refusal: BudgetRefusal,
    outcome: &mut Outcome,
) -> Result<()> {
    match refusal {
        BudgetRefusal::Spent(spent) => {
            let message = format!(
                "Token budget {} is spent; retry in {} s.",
                spent.limit, spent.retry_after_seconds
            );
            outcome.refused = Some(Cow::Owned(format!("token_limit.{}", spent.limit)));
            let body = openai_error("tokens", "rate_limit_exceeded", &message);
            let wait = HeaderValue::from(spent.retry_after_seconds);
            write_json(session, 429, body, &[(http::header::RETRY_AFTER, wait)]).await
        }
        BudgetRefusal::StoreUnavailable => {
            outcome.refused = Some("token_limit.store_unavailable".into());
            let body = openai_error(
                "server_error",
                "budget_store_unavailable",
                "Token budgets cannot be checked now; retry shortly.",
            );
            write_json(session, 503, body, &[]).await
        }
    }
}

async fn serve_admitted(
    session: &mut Session,
    ex: &Exchange<'_>,
    body: Bytes,
    outcome: &mut Outcome,
    tab: &mut Tab,
) -> Result<()> {
    let rules = ex.rules;
    let method = session.req_header().method.clone();
    let plan = match ex.target {
        LlmTarget::ByModel => {
            let rest = ex.rest.trim_end_matches('/');
            if rest == "/models" || rest.starts_with("/models/") {
                return list_models(session, &rules.table, rest, outcome).await;
            }
            let Some(endpoint) = Endpoint::of_path(rest) else {
                outcome.refused = Some("llm.unknown_endpoint".into());
                let message = format!("Unknown endpoint {rest}: this route serves /chat/completions, /embeddings and /models.");
                let body = openai_error("invalid_request_error", "unknown_url", &message);
                return write_json(session, 404, body, &[]).await;
            };
            if method != http::Method::POST {
                outcome.refused = Some("llm.method".into());
                let body = openai_error("invalid_request_error", "method_not_allowed", "Use POST.");
                return write_json(
                    session,
                    405,
                    body,
                    &[(http::header::ALLOW, HeaderValue::from_static("POST"))],
                )
                .await;
            }
            let request = match LlmRequest::parse(&body) {
                Ok(r) => r,
                Err(e) => {
                    outcome.refused = Some("llm.bad_request".into());
                    let body =
                        openai_error("invalid_request_error", "invalid_body", &e.to_string());
                    return write_json(session, 400, body, &[]).await;
                }
            };
            let Some(entry) = rules.table.resolve(&request.model) else {
                outcome.refused = Some("llm.unknown_model".into());
                let message = format!(
                    "The model `{}` does not exist or is not served here; GET {}/models lists the models.",
                    request.model,
                    ex.prefix.trim_end_matches('/')
                );
                let body = openai_error("invalid_request_error", "model_not_found", &message);
                return write_json(session, 400, body, &[]).await;
            };
            let mut plan = Vec::with_capacity(entry.targets.len());
            let mut converse: Option<Bytes> = None;
            for target in &entry.targets {
                let Some(provider) = rules.table.providers.get(&target.provider) else {
                    continue;
                };
                let served_as = target
                    .deployment
                    .as_deref()
                    .or(target.model.as_deref())
                    .unwrap_or(&request.model);
                let bedrock = provider.kind == ProviderKind::Bedrock;
                let (url, body, translate) = if bedrock {
                    if endpoint != Endpoint::ChatCompletions {
                        continue;
                    }
                    // Translated once, whatever the number of Bedrock targets.
                    if converse.is_none() {
                        match bedrock_api::converse_request(&body) {
                            Ok(translated) => converse = Some(Bytes::from(translated)),
                            Err(e) => {
                                outcome.refused = Some("llm.untranslatable".into());
                                let body = openai_error(
                                    "invalid_request_error",
                                    "unsupported_for_bedrock",
                                    &e.to_string(),
                                );
                                return write_json(session, 400, body, &[]).await;
                            }
                        }
                    }
                    let translate = if request.stream {
                        Translate::BedrockStream
                    } else {
                        Translate::BedrockWhole
                    };
                    let url = provider.bedrock_url(served_as, request.stream);
                    (url, converse.clone().unwrap_or_default(), translate)
                } else {
                    let body = match request.body_for(target.model.as_deref()) {
                        Cow::Borrowed(_) => body.clone(),
                        Cow::Owned(rebuilt) => Bytes::from(rebuilt),
                    };
                    (provider.url(endpoint, target), body, Translate::None)
                };
                plan.push(Attempt {
                    provider_name: &target.provider,
                    provider,
                    native: false,
                    url,
                    body,
                    target_id: format!("{}/{served_as}", target.provider),
                    model_label: &entry.name,
                    signing_region: provider.signing_region(),
                    translate,
                    answer_model: if bedrock {
                        request.model.clone()
                    } else {
                        String::new()
                    },
                });
            }
            plan
        }
        LlmTarget::Native(name) => {
            let Some(provider) = rules.table.providers.get(name) else {
                outcome.refused = Some("llm.unknown_provider".into());
                let body = openai_error("server_error", "provider_unknown", "No such provider.");
                return write_json(session, 503, body, &[]).await;
            };
            let query = session.req_header().uri.query().map(without_key_param);
            let rest = match query.as_deref() {
                Some(q) if !q.is_empty() => format!("{}?{q}", ex.rest),
                _ => ex.rest.to_string(),
            };
            vec![Attempt {
                provider_name: name,
                provider,
                native: true,
                url: provider.native_url(&rest),
                body,
                target_id: format!("{name}/native"),
                model_label: "native",
                signing_region: provider.signing_region(),
                translate: Translate::None,
                answer_model: String::new(),
            }]
        }
    };
    sync_rests(rules, &plan).await;
    let now = Instant::now();
    let (mut ready, cooling): (Vec<_>, Vec<_>) = plan
        .into_iter()
        .partition(|a| !rules.cooldowns.cooling(&a.target_id, now));
    // Resting targets are a last resort, not a refusal: with every target resting, the
    // request is still tried.
    ready.extend(cooling);
    ready.truncate(rules.settings.max_attempts.max(1));

    let mut last = None;
    for attempt in &ready {
        outcome.provider = Some(attempt.provider_name.to_string());
        match call(session, ex, &method, attempt, outcome, tab).await? {
            None => return Ok(()),
            Some(failure) => {
                let (result, retry_after) = match &failure {
                    Failure::KeyMissing { .. } => ("key_missing", None),
                    Failure::Unsigned { .. } => ("credentials_missing", None),
                    Failure::Transport { kind, .. } => (*kind, None),
                    Failure::Answered {
                        status, headers, ..
                    } => (
                        if *status == 429 {
                            "rate_limited"
                        } else {
                            "server_error"
                        },
                        cooldown::retry_after(headers),
                    ),
                };
                ex.metrics
                    .llm_attempts
                    .with_label_values(&[attempt.provider_name, result])
                    .inc();
                let rest = match failure {
                    Failure::KeyMissing { .. } | Failure::Unsigned { .. } => None,
                    _ => rules.cooldowns.failed(
                        &attempt.target_id,
                        Instant::now(),
                        rules.policy(),
                        retry_after,
                    ),
                };
                if let Some(until) = rest {
                    ex.metrics
                        .llm_cooldowns
                        .with_label_values(&[attempt.provider_name])
                        .inc();
                    publish_rest(rules, &attempt.target_id, until).await;
                }
                log::info!(
                    "llm: {} via {} failed ({result}); {} target(s) left",
                    attempt.model_label,
                    attempt.provider_name,
                    ready.len().saturating_sub(1)
                );
                last = Some(failure);
            }
        }
    }
    match last {
        Some(Failure::Answered {
            status,
            headers,
            body,
        }) => {
            outcome.upstream_error = Some(if status == 429 {
                "rate_limited"
            } else {
                "status"
            });
            let mut resp = ResponseHeader::build(status, Some(headers.len() + 1))?;
            copy_answer_headers(&headers, &mut resp)?;
            resp.insert_header("content-length", body.len().to_string())?;
            session
                .write_response_header(Box::new(resp), false)
                .await
                .map_err(Error::into_down)?;
            session
                .write_response_body(Some(body), true)
                .await
                .map_err(Error::into_down)
        }
        Some(Failure::KeyMissing { provider }) => {
            outcome.refused = Some("llm.key_missing".into());
            let message = format!(
                "Provider {provider} has no API key configured; ask the gateway's operators."
            );
            let body = openai_error("server_error", "provider_key_missing", &message);
            write_json(session, 503, body, &[]).await
        }
        Some(Failure::Unsigned { provider, why }) => {
            outcome.refused = Some("llm.credentials_missing".into());
            log::warn!("llm: provider {provider}: {why}");
            let message = format!(
                "Provider {provider} cannot be called: rampart has no AWS credentials to sign with; ask the gateway's operators."
            );
            let body = openai_error("server_error", "provider_credentials_missing", &message);
            write_json(session, 503, body, &[]).await
        }
        Some(Failure::Transport { kind, status }) => {
            outcome.upstream_error = Some(kind);
            let message = format!("No provider could be reached ({kind}).");
            let body = openai_error("server_error", "upstream_unavailable", &message);
            write_json(session, status, body, &[]).await
        }
        None => {
            outcome.refused = Some("llm.no_target".into());
            let body = openai_error(
                "server_error",
                "no_target",
                "No provider serves this model.",
            );
            write_json(session, 503, body, &[]).await
        }
    }
}

/// One try at one target. `None` when it answered (and the answer went to the client),
/// the failure when the next target may be tried. A write to the client that fails is the
/// client's doing (it hung up): marked so, it is not counted as the provider's error.
async fn call(
    session: &mut Session,
    ex: &Exchange<'_>,
    method: &http::Method,
    attempt: &Attempt<'_>,
    outcome: &mut Outcome,
    tab: &mut Tab,
) -> Result<Option<Failure>> {
    let rules = ex.rules;
    let headers = match request_headers(session, ex, attempt).await {
        Ok(headers) => headers,
        Err(failure) => return Ok(Some(failure)),
    };
    let request = rules
        .client
        .request(method.clone(), &attempt.url)
        .headers(headers)
        .body(attempt.body.clone());
    let first_byte = Duration::from_millis(rules.settings.first_byte_timeout_ms);
    let mut answer = match tokio::time::timeout(first_byte, request.send()).await {
        Err(_) => return Ok(Some(transport("timeout", 504))),
        Ok(Err(e)) => return Ok(Some(transport_error(&e))),
        Ok(Ok(answer)) => answer,
    };
    let status = answer.status().as_u16();
    let idle = Duration::from_millis(rules.settings.idle_timeout_ms);
    let translated = attempt.translate != Translate::None;
    if status == 429 || status >= 500 || (translated && status >= 400) {
        let mut headers = answer.headers().clone();
        let mut body = read_bounded(&mut answer, idle, ERROR_BODY_LIMIT).await;
        body.truncate(ERROR_BODY_LIMIT);
        if translated {
            let kind = headers
                .get("x-amzn-errortype")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            body = bedrock_api::openai_error(&body, status, kind.as_deref()).into();
            headers = content_type_only("application/json");
        }
        if status == 429 || status >= 500 {
            return Ok(Some(Failure::Answered {
                status,
                headers,
                body,
            }));
        }
        // Bedrock refused the request itself (400, 403...): the client hears why.
        ex.metrics
            .llm_attempts
            .with_label_values(&[attempt.provider_name, "client_error"])
            .inc();
        outcome.upstream_error = Some("status");
        write_json(session, status, body, &[]).await?;
        return Ok(None);
    }
    // Bedrock's answer becomes OpenAI's: whole, or as a stream translated chunk by chunk.
    let (mut length, mut first, mut translator) = (answer.content_length(), None, None);
    match attempt.translate {
        Translate::None => {}
        Translate::BedrockWhole => {
            let whole = read_bounded(&mut answer, idle, USAGE_BODY_LIMIT).await;
            let Some(completion) = bedrock_api::chat_completion(
                &whole,
                &attempt.answer_model,
                &completion_id(),
                now_ms() / 1000,
            ) else {
                return Ok(Some(transport("upstream", 502)));
            };
            length = Some(completion.len() as u64);
            first = Some(Some(Bytes::from(completion)));
        }
        Translate::BedrockStream => {
            length = None;
            translator = Some(bedrock_api::StreamTranslator::new(
                &attempt.answer_model,
                &completion_id(),
                now_ms() / 1000,
            ));
        }
    }
    // The first chunk is awaited before anything is written, so that an answer breaking
    // before its first byte can still go to the next target.
    let first = match first {
        Some(whole) => whole,
        None => match tokio::time::timeout(idle, answer.chunk()).await {
            Err(_) => return Ok(Some(transport("timeout", 504))),
            Ok(Err(e)) => return Ok(Some(transport_error(&e))),
            Ok(Ok(first)) => first,
        },
    };
    if rules.cooldowns.succeeded(&attempt.target_id) {
        end_rest(rules, &attempt.target_id).await;
    }
    let labels = [attempt.provider_name, attempt.model_label];
    ex.metrics
        .llm_attempts
        .with_label_values(&[
            attempt.provider_name,
            if status < 400 { "ok" } else { "client_error" },
        ])
        .inc();

    let answer_headers = match attempt.translate {
        Translate::None => answer.headers().clone(),
        Translate::BedrockWhole => content_type_only("application/json"),
        Translate::BedrockStream => content_type_only("text/event-stream"),
    };
    let mut resp = ResponseHeader::build(status, Some(answer_headers.len() + 1))?;
    copy_answer_headers(&answer_headers, &mut resp)?;
    let bodiless = matches!(status, 100..=199 | 204 | 304) || *method == http::Method::HEAD;
    match length {
        Some(n) => resp.insert_header("content-length", n.to_string())?,
        None if !bodiless => resp.insert_header("transfer-encoding", "chunked")?,
        None => {}
    }
    let streamed = answer_headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let mut usage = UsageReader::new(streamed && status < 400);
    // A stream that spends the caller's budget is cut at an event boundary, which needs
    // chunked framing (a declared length cannot be cut short).
    let mut meter = Meter::new(streamed && status < 400 && tab.counts(), tab.charged());
    let cuttable = length.is_none();
    let mut edges = EventEdges::default();
    let mut spent = None;
    session
        .write_response_header(Box::new(resp), false)
        .await
        .map_err(Error::into_down)?;
    // An error answer generated nothing: the admission's estimate comes back.
    outcome.answered = status < 400;
    let mut next = first;
    let mut first_written = false;
    while let Some(raw) = next {
        let mut chunk = match translator.as_mut().map(|t| t.feed(&raw)) {
            None => raw,
            Some(Ok(events)) => Bytes::from(events),
            Some(Err(e)) => return Err(broken_stream(ex, attempt, outcome, &e.to_string())),
        };
        if chunk.is_empty() {
            next = next_chunk(&mut answer, idle)
                .await
                .map_err(|why| broken_stream(ex, attempt, outcome, &why))?;
            continue;
        }
        if spent.is_some() {
            if let Some(end) = edges.first_edge(&chunk) {
                chunk.truncate(end);
            }
        }
        usage.feed(&chunk);
        if meter.on() {
            edges.advance(&chunk);
        }
        session
            .write_response_body(Some(chunk), false)
            .await
            .map_err(Error::into_down)?;
        if !first_written {
            first_written = true;
            ex.metrics
                .llm_time_to_first_token
                .with_label_values(&labels)
                .observe(ex.start.elapsed().as_secs_f64());
        }
        if spent.is_none() {
            if let Some(running) = meter.due(usage.progress(), tab.charged()) {
                if let Err(e) = rules.budget.settle(tab, running).await {
                    spent = cuttable.then_some(e);
                }
            }
        }
        if let Some(e) = spent.as_ref().filter(|_| edges.at_edge()) {
            let last = metering::budget_event(attempt.native, attempt.provider.kind, e);
            session
                .write_response_body(Some(last), true)
                .await
                .map_err(Error::into_down)?;
            outcome.refused = Some(Cow::Owned(format!("token_limit.{}", e.limit)));
            ex.metrics
                .llm_budget_cuts
                .with_label_values(&[e.limit.as_str()])
                .inc();
            // What reached the client is what it is charged.
            if let Some(running) = meter.running(usage.progress()) {
                let _ = rules.budget.settle(tab, running).await;
            }
            return Ok(None);
        }
        next = next_chunk(&mut answer, idle)
            .await
            .map_err(|why| broken_stream(ex, attempt, outcome, &why))?;
    }
    session
        .write_response_body(None, true)
        .await
        .map_err(Error::into_down)?;
    ex.metrics
        .llm_duration
        .with_label_values(&labels)
        .observe(ex.start.elapsed().as_secs_f64());
    let running = meter.running(usage.progress());
    let used = usage.finish();
    if status < 400 {
        // The provider's usage is the truth; without it, what the stream showed stands.
        let total = used.map(|u| u.total()).or(running);
        if let Some(total) = total {
            let _ = rules.budget.settle(tab, total).await;
        }
        if let Some(used) = used {
            outcome.usage = Some(used);
            let team = ex
                .caller
                .identity
                .and_then(|w| w.team.as_deref())
                .unwrap_or("none");
            let tokens = &ex.metrics.llm_tokens;
            tokens
                .with_label_values(&[attempt.provider_name, attempt.model_label, team, "prompt"])
                .inc_by(used.prompt_tokens);
            tokens
                .with_label_values(&[
                    attempt.provider_name,
                    attempt.model_label,
                    team,
                    "completion",
                ])
                .inc_by(used.completion_tokens);
        }
    }
    Ok(None)
}

/// The headers a target's request carries: the client's, less what stays behind, and the
/// provider's key; or, for Bedrock, a SigV4 signature.
async fn request_headers(
    session: &Session,
    ex: &Exchange<'_>,
    attempt: &Attempt<'_>,
) -> std::result::Result<HeaderMap, Failure> {
    let rules = ex.rules;
    let mut headers = HeaderMap::with_capacity(session.req_header().headers.len());
    if let Some(region) = attempt.signing_region {
        if attempt.translate == Translate::None {
            if let Some(ctype) = session.req_header().headers.get(http::header::CONTENT_TYPE) {
                headers.insert(http::header::CONTENT_TYPE, ctype.clone());
            }
        } else {
            headers.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        let unsigned = |why: String| Failure::Unsigned {
            provider: attempt.provider_name.to_string(),
            why,
        };
        let credentials = rules
            .aws
            .current()
            .await
            .map_err(|e| unsigned(e.to_string()))?;
        bedrock::sign_request(
            &attempt.url,
            &attempt.body,
            region,
            credentials,
            &mut headers,
        )
        .map_err(|e| unsigned(e.to_string()))?;
        return Ok(headers);
    }
    let Some((key_name, key_value)) =
        rules.key_header(attempt.provider_name, attempt.provider, attempt.native)
    else {
        return Err(Failure::KeyMissing {
            provider: attempt.provider_name.to_string(),
        });
    };
    for (name, value) in &session.req_header().headers {
        let dropped = not_forwarded(name) || ex.consumed.contains(name);
        if !dropped {
            headers.append(name.clone(), value.clone());
        }
    }
    headers.insert(key_name, key_value);
    Ok(headers)
}

/// The answer's next chunk, within the idle timeout; the reason when the stream broke.
async fn next_chunk(
    answer: &mut reqwest::Response,
    idle: Duration,
) -> std::result::Result<Option<Bytes>, String> {
    match tokio::time::timeout(idle, answer.chunk()).await {
        Ok(Ok(next)) => Ok(next),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("idle timeout".to_string()),
    }
}

/// An answer's body, read up to `limit` bytes (what is left is not read).
async fn read_bounded(answer: &mut reqwest::Response, idle: Duration, limit: usize) -> Bytes {
    let mut body = BytesMut::new();
    while body.len() < limit {
        match tokio::time::timeout(idle, answer.chunk()).await {
            Ok(Ok(Some(chunk))) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    body.freeze()
}

/// The headers of a translated answer: its content type, nothing of the provider's.
fn content_type_only(content_type: &'static str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    h
}

/// An id for a translated answer, as OpenAI's `chatcmpl-...`.
fn completion_id() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("chatcmpl-bedrock-{:x}-{n:x}", now_ms())
}

/// An answer that broke after its first byte reached the client: the client's response is
/// cut short (its connection closes without the final chunk), which it sees as an error.
fn broken_stream(
    ex: &Exchange<'_>,
    attempt: &Attempt<'_>,
    outcome: &mut Outcome,
    why: &str,
) -> Box<Error> {
    ex.metrics
        .llm_attempts
        .with_label_values(&[attempt.provider_name, "stream_broken"])
        .inc();
    outcome.upstream_error = Some("stream_broken");
    let mut e = Error::explain(
        ErrorType::ReadError,
        format!("{} answer broke mid-stream: {why}", attempt.provider_name),
    );
    e.esource = pingora_core::ErrorSource::Upstream;
    e
}

/// Takes the rests other instances published for a plan's targets, at most once a second
/// per instance.
async fn sync_rests(rules: &LlmRules, plan: &[Attempt<'_>]) {
    let Some(store) = &rules.store else {
        return;
    };
    if plan.is_empty() || !store.available() || !rules.cooldowns.sync_due(now_ms()) {
        return;
    }
    let targets: Vec<&str> = plan.iter().map(|a| a.target_id.as_str()).collect();
    let Ok(rests) = store.rests(&targets).await else {
        return;
    };
    let (now, now_unix) = (Instant::now(), now_ms());
    for (target, until) in targets.iter().zip(rests) {
        if let Some(left) = until
            .and_then(|u| u.checked_sub(now_unix))
            .filter(|&l| l > 0)
        {
            rules
                .cooldowns
                .rest_until(target, now + Duration::from_millis(left));
        }
    }
}

/// Tells the other instances that a target rests until `until`.
async fn publish_rest(rules: &LlmRules, target: &str, until: Instant) {
    if let Some(store) = rules.store.as_ref().filter(|s| s.available()) {
        let left = until.saturating_duration_since(Instant::now());
        let until_ms = now_ms() + u64::try_from(left.as_millis()).unwrap_or(u64::MAX / 2);
        if let Err(e) = store.publish_rest(target, until_ms).await {
            log::debug!("llm: cooldown of {target} not shared: {e}");
        }
    }
}

/// Tells the other instances that a resting target answered.
async fn end_rest(rules: &LlmRules, target: &str) {
    if let Some(store) = rules.store.as_ref().filter(|s| s.available()) {
        if let Err(e) = store.end_rest(target).await {
            log::debug!("llm: end of {target}'s cooldown not shared: {e}");
        }
    }
}

fn transport(kind: &'static str, status: u16) -> Failure {
    Failure::Transport { kind, status }
}

fn transport_error(e: &reqwest::Error) -> Failure {
    if e.is_timeout() {
        return transport("timeout", 504);
    }
    // reqwest reports certificate problems as connect errors; the source chain says which.
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = source {
        let text = s.to_string();
        if text.contains("certificate") || text.contains("tls") || text.contains("TLS") {
            return transport("tls", 502);
        }
        source = s.source();
    }
    if e.is_connect() {
        transport("connect", 502)
    } else {
        transport("upstream", 502)
    }
}

fn copy_answer_headers(from: &HeaderMap, to: &mut ResponseHeader) -> Result<()> {
    for (name, value) in from {
        let name_str = name.as_str();
        if !HOP_BY_HOP.contains(&name_str) && !CONNECTION_AND_FRAMING.contains(&name_str) {
            to.append_header(name.clone(), value.clone())?;
        }
    }
    Ok(())
}

/// Reads an answer's usage as it passes: from the SSE events of a stream, or from the
/// JSON of a whole answer (kept up to a bound).
enum UsageReader {
    Stream(SseUsage),
    Whole(Option<BytesMut>),
}

impl UsageReader {
    fn new(streamed: bool) -> Self {
        if streamed {
            UsageReader::Stream(SseUsage::default())
        } else {
            UsageReader::Whole(Some(BytesMut::new()))
        }
    }

    fn feed(&mut self, chunk: &[u8]) {
        match self {
            UsageReader::Stream(sse) => {
                sse.feed(chunk);
            }
            UsageReader::Whole(kept) => {
                if kept
                    .as_ref()
                    .is_some_and(|k| k.len() + chunk.len() > USAGE_BODY_LIMIT)
                {
                    *kept = None;
                }
                if let Some(k) = kept {
                    k.extend_from_slice(chunk);
                }
            }
        }
    }

    /// How far a stream has come: its events and the usage it reported so far.
    fn progress(&self) -> Option<metering::Progress> {
        match self {
            UsageReader::Stream(sse) => Some(metering::Progress {
                events: sse.events(),
                reported: sse.usage(),
            }),
            UsageReader::Whole(_) => None,
        }
    }

    fn finish(self) -> Option<Usage> {
        match self {
            UsageReader::Stream(sse) => sse.usage(),
            UsageReader::Whole(kept) => usage_of_json(&kept?),
        }
    }
}

/// `GET /v1/models` and `/v1/models/{id}`: the names the table serves, in OpenAI's shape.
async fn list_models(
    session: &mut Session,
    table: &ModelTable,
    rest: &str,
    outcome: &mut Outcome,
) -> Result<()> {
    let model = |id: &str, owner: &str| serde_json::json!({ "id": id, "object": "model", "created": 0, "owned_by": owner });
    let owner = |entry: &rampart_plugins::models::ModelEntry| {
        entry
            .targets
            .first()
            .map(|t| t.provider.clone())
            .unwrap_or_default()
    };
    let body = match rest.strip_prefix("/models/") {
        Some(id) => match table.model_ids().find(|(name, _)| *name == id) {
            Some((name, entry)) => model(name, &owner(entry)),
            None => {
                outcome.refused = Some("llm.unknown_model".into());
                let message = format!("The model `{id}` does not exist or is not served here.");
                let body = openai_error("invalid_request_error", "model_not_found", &message);
                return write_json(session, 404, body, &[]).await;
            }
        },
        None => {
            // Exact names and aliases, then the globs (`claude-*`) as they are written, marked
            // so that a client can tell a pattern from a model id.
            let mut data: Vec<_> = table
                .model_ids()
                .map(|(name, entry)| model(name, &owner(entry)))
                .collect();
            data.extend(table.glob_entries().map(|entry| {
                let mut m = model(&entry.name, &owner(entry));
                m["pattern"] = serde_json::Value::Bool(true);
                m
            }));
            serde_json::json!({ "object": "list", "data": data })
        }
    };
    write_json(session, 200, Bytes::from(body.to_string()), &[]).await
}

/// The query without `key=` parameters: Gemini accepts its key there, and the client's key
/// is for rampart, never for the provider.
fn without_key_param(query: &str) -> String {
    query
        .split('&')
        .filter(|pair| pair.split('=').next() != Some("key"))
        .collect::<Vec<_>>()
        .join("&")
}

/// The HTTP client for providers: pooled connections, TLS with SNI and certificate checks
/// against the public roots (and `ca_file`'s), no redirects followed.
pub fn http_client(settings: &LlmConfig) -> std::result::Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(settings.connect_timeout_ms))
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::none())
        .use_rustls_tls();
    if let Some(path) = &settings.ca_file {
        let pem =
            std::fs::read(path).map_err(|e| format!("llm.ca_file {}: {e}", path.display()))?;
        let roots = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("llm.ca_file {}: {e}", path.display()))?;
        for root in roots {
            builder = builder.add_root_certificate(root);
        }
    }
    builder.build().map_err(|e| format!("LLM HTTP client: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clients_key_never_travels_in_the_query() {
        assert_eq!(without_key_param("alt=sse&key=AIza123"), "alt=sse");
        assert_eq!(without_key_param("key=x"), "");
        assert_eq!(without_key_param("keys=1&alt=sse"), "keys=1&alt=sse");
    }

    #[test]
    fn usage_is_read_from_streams_and_whole_answers() {
        let mut whole = UsageReader::new(false);
        whole.feed(br#"{"usage":{"prompt_tokens":3,"#);
        whole.feed(br#""completion_tokens":4}}"#);
        assert_eq!(whole.finish().map(|u| u.total()), Some(7));
        let mut stream = UsageReader::new(true);
        stream.feed(b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n");
        assert_eq!(stream.finish().map(|u| u.total()), Some(3));
    }

    #[test]
    fn the_shipped_model_table_holds_together() {
        let text = include_str!("../../../rules/models.toml");
        let table = ModelTable::parse("rules/models.toml", text).expect("the shipped table parses");
        for model in [
            "gpt-4o",
            "gpt-4.1-mini",
            "o3",
            "claude-sonnet-4-5",
            "gemini-2.5-flash",
        ] {
            assert!(table.resolve(model).is_some(), "{model}");
        }
        assert_eq!(table.providers.len(), 4);
    }

    #[test]
    fn errors_have_openais_shape() {
        let body = openai_error("invalid_request_error", "model_not_found", "no");
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }
}
