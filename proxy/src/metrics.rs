//! Prometheus metrics. Labels are bounded by config (listener, route, upstream, plugin,
//! rule id): never an address, a path or a secret.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_errors: IntCounterVec,
    pub plugin_verdicts: IntCounterVec,
    pub rule_matches: IntCounterVec,
    pub reloads: IntCounterVec,
    pub config_generation: IntGauge,
    pub config_last_reload_success: IntGauge,
    pub upstream_healthy: IntGaugeVec,
    pub connections_refused: IntCounterVec,
    pub client_closes: IntCounterVec,
    pub client_connections: IntGaugeVec,
    pub store_errors: IntCounterVec,
    pub store_up: IntGauge,
    pub jwks_fetches: IntCounterVec,
    pub secret_refreshes: IntCounterVec,
    pub llm_attempts: IntCounterVec,
    pub llm_cooldowns: IntCounterVec,
    pub llm_budget_cuts: IntCounterVec,
    pub llm_time_to_first_token: HistogramVec,
    pub llm_duration: HistogramVec,
    pub llm_tokens: IntCounterVec,
    pub access_log_dropped: IntCounter,
    /// Read from the WAFs' judged-item store at each scrape.
    judged_item_bytes: IntGauge,
    judged_item_stepped_over: IntCounter,
}

/// Latency buckets from 0.5 ms (a refused request) to 5 minutes (a long LLM stream).
const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0, 300.0,
];

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "rampart_requests_total",
                "Requests answered, by listener, route and status class.",
            ),
            &["listener", "route", "status_class"],
        )?;
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "rampart_request_duration_seconds",
                "Time from request header to the end of the response.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["listener", "route"],
        )?;
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "rampart_upstream_errors_total",
                "Failures talking to an upstream, by kind.",
            ),
            &["upstream", "kind"],
        )?;
        let plugin_verdicts = IntCounterVec::new(
            Opts::new(
                "rampart_plugin_verdicts_total",
                "Plugin matches, by listener, plugin, rule id and the action taken (block or count).",
            ),
            &["listener", "plugin", "rule", "action"],
        )?;
        let rule_matches = IntCounterVec::new(
            Opts::new(
                "rampart_rule_matches_total",
                "Rules that matched inside a plugin (WAF rules), by listener, plugin, rule label and action.",
            ),
            &["listener", "plugin", "rule", "action"],
        )?;
        let reloads = IntCounterVec::new(
            Opts::new(
                "rampart_config_reloads_total",
                "Rules reloads, by result (success or failure); the first load at start is not one.",
            ),
            &["result"],
        )?;
        let config_generation = IntGauge::new(
            "rampart_config_generation",
            "Generation of the rules snapshot in force; starts at 1 and grows with each successful reload.",
        )?;
        // Which build is running, as Prometheus' `*_build_info` convention has it: 1, with the
        // version (and the commit, when the build was given RAMPART_COMMIT) as labels.
        let build_info = IntGaugeVec::new(
            Opts::new(
                "rampart_build_info",
                "The running build: always 1, labelled with its version and commit.",
            ),
            &["version", "commit"],
        )?;
        build_info
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                option_env!("RAMPART_COMMIT").unwrap_or("unknown"),
            ])
            .set(1);
        registry.register(Box::new(build_info))?;
        let config_last_reload_success = IntGauge::new(
            "rampart_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful rules load.",
        )?;
        let upstream_healthy = IntGaugeVec::new(
            Opts::new(
                "rampart_upstream_healthy_backends",
                "Replicas of an upstream that pass their health check.",
            ),
            &["upstream"],
        )?;
        let connections_refused = IntCounterVec::new(
            Opts::new(
                "rampart_connections_refused_total",
                "Connections dropped at accept because a blocking IP list holds the peer.",
            ),
            &["listener"],
        )?;
        registry.register(Box::new(connections_refused.clone()))?;
        let client_closes = IntCounterVec::new(
            Opts::new(
                "rampart_client_closes_total",
                "Client connections closed or refused for a limit, by reason: idle_timeout, header_timeout, header_too_large, body_timeout, write_timeout, too_many_connections, too_many_from_address, malformed_request.",
            ),
            &["listener", "reason"],
        )?;
        registry.register(Box::new(client_closes.clone()))?;
        let client_connections = IntGaugeVec::new(
            Opts::new(
                "rampart_client_connections",
                "Client connections open on a listener.",
            ),
            &["listener"],
        )?;
        registry.register(Box::new(client_connections.clone()))?;
        let store_errors = IntCounterVec::new(
            Opts::new(
                "rampart_rate_limit_store_errors_total",
                "Failed calls to the shared rate-limit store (Redis), by kind; each falls back to the local counters or refuses, per config.",
            ),
            &["kind"],
        )?;
        let store_up = IntGauge::new(
            "rampart_rate_limit_store_up",
            "1 when the last call to the shared rate-limit store succeeded, 0 when it failed.",
        )?;
        let jwks_fetches = IntCounterVec::new(
            Opts::new(
                "rampart_jwks_fetches_total",
                "Fetches of token issuers' keys (JWKS), by result; a failure keeps the last good keys.",
            ),
            &["result"],
        )?;
        registry.register(Box::new(jwks_fetches.clone()))?;
        let secret_refreshes = IntCounterVec::new(
            Opts::new(
                "rampart_secret_refreshes_total",
                "Background reads of secrets from AWS Secrets Manager, by result; a failure keeps the last good values.",
            ),
            &["result"],
        )?;
        registry.register(Box::new(secret_refreshes.clone()))?;
        let llm_attempts = IntCounterVec::new(
            Opts::new(
                "rampart_llm_attempts_total",
                "Calls to LLM providers, by provider and result (ok, client_error, rate_limited, server_error, connect, tls, timeout, key_missing, stream_broken); a failure before the answer's first byte moves on to the model's next target.",
            ),
            &["provider", "result"],
        )?;
        registry.register(Box::new(llm_attempts.clone()))?;
        let llm_cooldowns = IntCounterVec::new(
            Opts::new(
                "rampart_llm_cooldowns_total",
                "Provider targets sent to rest after repeated failures or a Retry-After.",
            ),
            &["provider"],
        )?;
        registry.register(Box::new(llm_cooldowns.clone()))?;
        let llm_budget_cuts = IntCounterVec::new(
            Opts::new(
                "rampart_llm_budget_cuts_total",
                "Streams ended at an event boundary because they spent a token budget, by the budget's name.",
            ),
            &["limit"],
        )?;
        registry.register(Box::new(llm_budget_cuts.clone()))?;
        let llm_time_to_first_token = HistogramVec::new(
            HistogramOpts::new(
                "rampart_llm_time_to_first_token_seconds",
                "From the request's arrival to the first byte of the provider's answer reaching the client.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["provider", "model"],
        )?;
        registry.register(Box::new(llm_time_to_first_token.clone()))?;
        let llm_duration = HistogramVec::new(
            HistogramOpts::new(
                "rampart_llm_request_duration_seconds",
                "From the request's arrival to the end of the provider's answer.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["provider", "model"],
        )?;
        registry.register(Box::new(llm_duration.clone()))?;
        let llm_tokens = IntCounterVec::new(
            Opts::new(
                "rampart_llm_tokens_total",
                "Tokens LLM providers reported, by provider, model table entry, team and kind (prompt or completion).",
            ),
            &["provider", "model", "team", "kind"],
        )?;
        registry.register(Box::new(llm_tokens.clone()))?;
        let access_log_dropped = IntCounter::new(
            "rampart_access_log_dropped_total",
            "Access log lines dropped because stdout could not take them as fast as requests came.",
        )?;
        registry.register(Box::new(access_log_dropped.clone()))?;
        let judged_item_bytes = IntGauge::new(
            "rampart_waf_judged_item_bytes",
            "Bytes of conversation items the WAFs judged clean and keep, so that a conversation sent again is not read again (at most 32 MiB).",
        )?;
        registry.register(Box::new(judged_item_bytes.clone()))?;
        let judged_item_stepped_over = IntCounter::new(
            "rampart_waf_judged_item_stepped_over_bytes_total",
            "Bytes of request bodies the WAFs did not read again because they had judged them clean in an earlier request.",
        )?;
        registry.register(Box::new(judged_item_stepped_over.clone()))?;
        registry.register(Box::new(store_errors.clone()))?;
        registry.register(Box::new(store_up.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(request_duration.clone()))?;
        registry.register(Box::new(upstream_errors.clone()))?;
        registry.register(Box::new(plugin_verdicts.clone()))?;
        registry.register(Box::new(rule_matches.clone()))?;
        registry.register(Box::new(reloads.clone()))?;
        registry.register(Box::new(config_generation.clone()))?;
        registry.register(Box::new(config_last_reload_success.clone()))?;
        registry.register(Box::new(upstream_healthy.clone()))?;
        // Both results exist from the start, so that rate() and alerts see a zero.
        reloads.with_label_values(&["success"]);
        reloads.with_label_values(&["failure"]);
        Ok(Metrics {
            registry,
            requests,
            request_duration,
            upstream_errors,
            plugin_verdicts,
            rule_matches,
            reloads,
            config_generation,
            config_last_reload_success,
            upstream_healthy,
            connections_refused,
            client_closes,
            client_connections,
            store_errors,
            store_up,
            jwks_fetches,
            secret_refreshes,
            llm_attempts,
            llm_cooldowns,
            llm_budget_cuts,
            llm_time_to_first_token,
            llm_duration,
            llm_tokens,
            access_log_dropped,
            judged_item_bytes,
            judged_item_stepped_over,
        })
    }

    /// The text exposition format.
    pub fn render(&self) -> Vec<u8> {
        // The judged-item store counts for itself (the plugins know no Prometheus): read at
        // each scrape.
        let judged = rampart_plugins::waf::judged::shared();
        self.judged_item_bytes.set(judged.bytes() as i64);
        let stepped = judged.stepped_over();
        let shown = self.judged_item_stepped_over.get();
        self.judged_item_stepped_over
            .inc_by(stepped.saturating_sub(shown));
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail on I/O; a metric family error would be a bug here.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            log::error!("metrics encoding failed: {e}");
        }
        out
    }
}

pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    }
}
