//! `owasp` (and `bad_inputs`): signature rules from `rules/waf/`, anomaly-scored.
//!
//! Every matching rule adds its severity's score (critical 5, error 4, warning 3, notice 2);
//! the request is refused when the total reaches the threshold (5: any critical rule alone).
//! Rules above the configured paranoia level do not run. Per route, a profile says which JSON
//! fields are prose (an LLM prompt) and which fields or rules are excluded.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;

use crate::registry::{BuildContext, BuildError};
use crate::waf::inspect::KnownItems;
use crate::waf::judged::{self, Judge, JudgedItems};
use crate::waf::{ActiveRules, BodyProblem, FieldMemo, Inspection, Profile, RuleMatch, RuleSet};
use crate::waf::{Source, Target};
use crate::{Deny, Finding, Plugin, RequestView, Verdict};

fn target_name(t: Target) -> &'static str {
    match t {
        Target::Method => "method",
        Target::Path => "path",
        Target::QueryString => "query_string",
        Target::ArgNames => "arg_names",
        Target::Args => "args",
        Target::CookieNames => "cookie_names",
        Target::Cookies => "cookies",
        Target::HeaderNames => "header_names",
        Target::Headers => "headers",
        Target::Body => "body",
        Target::Filenames => "filenames",
        Target::Urls => "urls",
    }
}

/// What to do with a rule, group or label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleAction {
    Block,
    /// Match and record, but add nothing to the score.
    Count,
    Off,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WafConfig {
    /// Rule files or directories, relative to the rules directory (default: `waf/<plugin>`,
    /// that is `waf/owasp` or `waf/bad-inputs`).
    #[serde(default)]
    pub rules: Vec<String>,
    #[serde(default = "default_paranoia")]
    pub paranoia: u8,
    #[serde(default = "default_threshold")]
    pub threshold: u32,
    /// Rule id, group id or label -> action. A rule id beats a label, a label beats a group.
    #[serde(default)]
    pub overrides: HashMap<String, RuleAction>,
    /// Named profiles; `llm` is built in.
    #[serde(default)]
    pub profiles: HashMap<String, Profile>,
    /// Route name -> profile name.
    #[serde(default)]
    pub routes: HashMap<String, String>,
}

fn default_paranoia() -> u8 {
    1
}
fn default_threshold() -> u32 {
    5
}

/// The built-in profile for chat, completion and embedding routes in the OpenAI shape
/// (chat completions, responses) and the Anthropic shape (messages): prompts are prose, so
/// only the URLs in them are inspected; the body size limit does not apply.
///
/// What a conversation carries back to the model is prose too: tool calls' arguments and
/// tool results (a coding agent's are source files and command output), and the model's
/// thinking. Content parts that something behind rampart fetches or decodes (`image_url`,
/// `file`, `source`, `input_audio`) are not prose and are judged in full.
pub fn llm_profile() -> Profile {
    Profile {
        prose_fields: [
            // OpenAI chat completions and the legacy completions.
            "messages[].content",
            "messages[].content[].text",
            "messages[].tool_calls[].function.arguments",
            "messages[].function_call.arguments",
            "prompt",
            "prompt[]",
            // Embeddings and the responses API.
            "input",
            "input[]",
            "input[].content",
            "input[].content[].text",
            "input[].arguments",
            "input[].output",
            "instructions",
            // Anthropic messages: tool use, tool results (a string or text blocks), thinking.
            "messages[].content[].input.**",
            "messages[].content[].content",
            "messages[].content[].content[].text",
            "messages[].content[].thinking",
            "system",
            "system[].text",
            // Tool definitions' descriptions, in both shapes.
            "tools[].function.description",
            "tools[].function.parameters.properties.*.description",
            "tools[].function.parameters.properties.*.items.description",
            "tools[].description",
            "tools[].input_schema.properties.*.description",
            "tools[].input_schema.properties.*.items.description",
            "functions[].description",
        ]
        .map(String::from)
        .to_vec(),
        exclude_fields: Vec::new(),
        exclude_rules: vec!["SizeRestrictions_BODY".to_string()],
        prose_exclude_rules: prose_not_fetched(),
    }
}

/// What does not judge URLs in the built-in profiles' prose: server-side request forgery.
/// A URL in a prompt's text is something for a model to read: LiteLLM (1.108,
/// `litellm_core_utils/prompt_templates/image_handling.py`) fetches only the URLs of
/// `image_url`, `file` and `source` content parts, which are not prose and are judged in
/// full; a provider's own tools fetch from the provider's network, not from behind rampart.
/// An operator whose agents fetch URLs from prompts behind rampart defines a profile with
/// `prose_exclude_rules = []`.
fn prose_not_fetched() -> Vec<String> {
    vec!["ssrf".to_string()]
}

/// The built-in profile for trace ingestion (Langfuse's `/api/public/ingestion` and OTLP
/// `/v1/traces` exports): what an LLM call recorded is prose, whatever its shape; the
/// structure around it (ids, names, tags, resource attributes) is inspected in full.
pub fn traces_profile() -> Profile {
    let ingestion = [
        "input",
        "output",
        "metadata",
        "statusMessage",
        "log",
        "prompt",
        "completion",
    ]
    .map(|f| format!("batch[].body.{f}.**"));
    // OTLP attributes and log bodies (see `waf::otlp` for the paths): the GenAI semantic
    // conventions, Langfuse's own, and OpenInference/OpenLLMetry's, which LiteLLM emits.
    let attributes = [
        "gen_ai.prompt",
        "gen_ai.completion",
        "gen_ai.input.messages",
        "gen_ai.output.messages",
        "gen_ai.system_instructions",
        "gen_ai.tool.definitions",
        "gen_ai.tool.call.arguments",
        "gen_ai.tool.call.result",
        "langfuse.observation.input",
        "langfuse.observation.output",
        "langfuse.observation.metadata",
        "langfuse.observation.status_message",
        "langfuse.observation.model.parameters",
        "langfuse.trace.input",
        "langfuse.trace.output",
        "langfuse.trace.metadata",
        "langfuse.experiment.description",
        "langfuse.experiment.metadata",
        "langfuse.experiment.item.expected_output",
        "langfuse.experiment.item.metadata",
        "input.value",
        "output.value",
        "llm.input_messages",
        "llm.output_messages",
        "llm.prompts",
        "llm.completions",
        "traceloop.entity.input",
        "traceloop.entity.output",
        "exception.message",
        "exception.stacktrace",
    ]
    .map(|a| format!("*.attributes.{a}.**"));
    Profile {
        prose_fields: ingestion
            .into_iter()
            .chain(attributes)
            .chain(["span.status.message".to_string(), "log.body.**".to_string()])
            .collect(),
        exclude_fields: Vec::new(),
        exclude_rules: vec!["SizeRestrictions_BODY".to_string()],
        prose_exclude_rules: prose_not_fetched(),
    }
}

pub struct Waf {
    name: &'static str,
    rules: Arc<RuleSet>,
    /// The rules run: at or below `paranoia`, not switched off everywhere.
    active: ActiveRules,
    paranoia: u8,
    threshold: u32,
    overrides: HashMap<String, RuleAction>,
    default_profile: RouteReading,
    route_profiles: HashMap<String, RouteReading>,
    /// What these rules found in recurring fields (see [`FieldMemo`]).
    memo: FieldMemo,
    /// The conversation items the process's WAFs judged clean (see [`JudgedItems`]).
    judged: &'static JudgedItems,
}

/// How a route's requests are read: its profile, with the digest that names the inspection
/// it builds, and who judges them (this WAF under this profile).
struct RouteReading {
    profile: Profile,
    fingerprint: u64,
    judge: Judge,
}

impl RouteReading {
    fn of(profile: Profile, waf: u64) -> Self {
        RouteReading {
            fingerprint: profile.fingerprint(),
            judge: judged::new_judge(waf, profile.digest()),
            profile,
        }
    }
}

/// Numbers the WAFs built, so that each judges for itself: a reload's WAFs do not take the
/// old ones' verdicts.
static WAFS_BUILT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Distinct recurring fields a WAF remembers: an API's user agents, hosts, content types
/// and paths, and the structure of the conversations in flight (a coding agent's turn holds
/// about 700 distinct short fields). Entries are at most 256 bytes of field: a few MiB when
/// every slot is full of the longest, about 1 MiB for the fields an LLM API carries.
const MEMO_SLOTS: usize = 8192;

/// The outcome of inspecting one request.
pub struct Assessment {
    pub score: u32,
    pub matches: Vec<(RuleMatch, RuleAction)>,
    /// The body could not be read as its declared type, so it could not be judged.
    pub body_problem: Option<BodyProblem>,
}

impl Waf {
    pub fn build(
        name: &'static str,
        config: WafConfig,
        ctx: &dyn BuildContext,
    ) -> Result<Self, BuildError> {
        if !(1..=4).contains(&config.paranoia) {
            return Err(BuildError::invalid(name, "paranoia must be 1 to 4"));
        }
        if config.threshold == 0 {
            return Err(BuildError::invalid(name, "threshold must be at least 1"));
        }
        let default_dir = format!("waf/{}", name.replace('_', "-"));
        let dirs = if config.rules.is_empty() {
            vec![default_dir]
        } else {
            config.rules.clone()
        };
        let mut files = Vec::new();
        for path in &dirs {
            files.extend(ctx.rule_files(path)?);
        }
        let rules = ctx.rule_set(&files)?;
        // A name that matches no rule would change nothing, silently: refused, with the
        // nearest names. The built-in profiles name rules of the shipped sets only, so only
        // the operator's own names are checked.
        let known: std::collections::BTreeSet<String> =
            rules.rules.iter().flat_map(|r| r.names()).collect();
        let named = config.overrides.keys().map(|n| ("overrides", n)).chain(
            config.profiles.values().flat_map(|p| {
                p.exclude_rules.iter().map(|n| ("exclude_rules", n)).chain(
                    p.prose_exclude_rules
                        .iter()
                        .map(|n| ("prose_exclude_rules", n)),
                )
            }),
        );
        for (field, rule) in named {
            if !known.contains(rule) {
                let message = crate::names::unknown(
                    "rule id, group or label",
                    rule,
                    known.iter().map(String::as_str),
                );
                return Err(BuildError::invalid(name, &format!("{field}: {message}")));
            }
        }
        let mut profiles = config.profiles;
        profiles
            .entry("llm".to_string())
            .or_insert_with(llm_profile);
        profiles
            .entry("traces".to_string())
            .or_insert_with(traces_profile);
        let waf = WAFS_BUILT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut route_profiles = HashMap::new();
        for (route, profile) in &config.routes {
            let p = profiles.get(profile).ok_or_else(|| {
                BuildError::invalid(
                    name,
                    &format!("route {route:?}: unknown profile {profile:?}"),
                )
            })?;
            route_profiles.insert(route.clone(), RouteReading::of(p.clone(), waf));
        }
        // A rule switched off by its id or group is off on every route: never run.
        let active = rules.active(config.paranoia, |r| {
            matches!(
                config
                    .overrides
                    .get(&r.id)
                    .or_else(|| config.overrides.get(&r.group)),
                Some(RuleAction::Off)
            )
        });
        Ok(Waf {
            name,
            rules,
            active,
            paranoia: config.paranoia,
            threshold: config.threshold,
            overrides: config.overrides,
            default_profile: RouteReading::of(Profile::default(), waf),
            route_profiles,
            memo: FieldMemo::new(MEMO_SLOTS),
            judged: judged::shared(),
        })
    }

    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    /// The conversation items the process's WAFs judged clean.
    pub fn judged_items(&self) -> &JudgedItems {
        self.judged
    }

    fn action(&self, m: &RuleMatch, profile: &Profile) -> RuleAction {
        self.action_of(m.rule, m.source, m.target == Target::Urls, profile)
    }

    /// What rule `rule` does when it matches a field from `source` (a URL found in prose
    /// when `in_url`) on a route read by `profile`.
    fn action_of(
        &self,
        rule: usize,
        source: Source,
        in_url: bool,
        profile: &Profile,
    ) -> RuleAction {
        let rule = &self.rules.rules[rule];
        let label = rule.label(source);
        let named = |list: &[String]| {
            list.iter()
                .any(|e| *e == rule.id || *e == label || *e == rule.group)
        };
        if named(&profile.exclude_rules) || in_url && named(&profile.prose_exclude_rules) {
            return RuleAction::Off;
        }
        self.overrides
            .get(&rule.id)
            .or_else(|| self.overrides.get(&label))
            .or_else(|| self.overrides.get(&rule.group))
            .copied()
            .unwrap_or(RuleAction::Block)
    }

    /// Inspects a request: every matching rule with the action it gets, and the score.
    pub fn assess(&self, req: &RequestView<'_>) -> Assessment {
        let route = self
            .route_profiles
            .get(req.route)
            .unwrap_or(&self.default_profile);
        let profile = &route.profile;
        let evaluate = |inspection: &Inspection| {
            let evaluation = self
                .rules
                .evaluate(inspection, &self.active, Some(&self.memo));
            // A body in which nothing counts on this route: its large items are judged
            // clean, and a later request that sends them again is not judged on them again.
            let counts = |hit: &crate::waf::rules::BodyHit| {
                self.action_of(hit.rule, Source::Body, hit.in_url, profile) != RuleAction::Off
            };
            if inspection.body_problem.is_none() && !evaluation.body_hits.iter().any(counts) {
                let body = req.body.unwrap_or_default();
                for item in &inspection.items.read {
                    if let Some(bytes) = body.get(item.range.clone()) {
                        self.judged.judged_clean(route.judge, &item.path, bytes);
                    }
                }
            }
            (evaluation.matches, inspection.body_problem)
        };
        // Without a chain's shared inspections (`explain`), the request is read whole.
        let (found, body_problem) = match req.inspections {
            Some(shared) => {
                let known = KnownItems {
                    judged: self.judged,
                    judge: route.judge,
                    located: req.body_items,
                };
                shared.with(req, profile, route.fingerprint, Some(known), evaluate)
            }
            None => evaluate(&Inspection::new(req, profile)),
        };
        let mut score = 0;
        let mut matches: Vec<(RuleMatch, RuleAction)> = Vec::new();
        for m in found {
            let action = self.action(&m, profile);
            // A rule found both in a prompt's URL and elsewhere counts once, where it
            // counts at all.
            if action == RuleAction::Off || matches.iter().any(|(n, _)| n.rule == m.rule) {
                continue;
            }
            if action == RuleAction::Block {
                score += self.rules.rules[m.rule].severity.score();
            }
            matches.push((m, action));
        }
        Assessment {
            score,
            matches,
            body_problem,
        }
    }
}

impl Plugin for Waf {
    fn rule_count(&self) -> usize {
        self.rules.rules.len()
    }

    fn route_names(&self) -> Vec<&str> {
        self.route_profiles.keys().map(String::as_str).collect()
    }

    fn name(&self) -> &'static str {
        self.name
    }

    fn inspects_body(&self) -> bool {
        true
    }

    fn explain(&self, req: &RequestView<'_>) -> Vec<String> {
        let a = self.assess(req);
        let mut lines: Vec<String> = a
            .matches
            .iter()
            .map(|(m, action)| {
                let rule = &self.rules.rules[m.rule];
                format!(
                    "{} [{}] {:?} +{} ({action:?}): {:?} {} {:?}: {:?}\n      {}",
                    rule.id,
                    rule.label(m.source),
                    rule.severity,
                    if *action == RuleAction::Block {
                        rule.severity.score()
                    } else {
                        0
                    },
                    m.target,
                    if m.field.is_empty() { "-" } else { &m.field },
                    m.source,
                    m.excerpt,
                    rule.description,
                ) + &m
                    .why
                    .as_ref()
                    .map(|w| format!("\n      detector: {w}"))
                    .unwrap_or_default()
            })
            .collect();
        if let Some(problem) = a.body_problem {
            let (status, rule) = problem.refusal();
            lines.push(format!(
                "{rule}: the body cannot be read as its Content-Type says ({status})"
            ));
        }
        let verdict = if a.score >= self.threshold || a.body_problem.is_some() {
            "REFUSED"
        } else {
            "passes"
        };
        lines.push(format!(
            "anomaly score {} (threshold {}, paranoia {}): {verdict}",
            a.score, self.threshold, self.paranoia
        ));
        lines
    }

    fn check_reporting(
        &self,
        req: &RequestView<'_>,
        report: &mut dyn FnMut(&Finding<'_>),
    ) -> Verdict {
        let a = self.assess(req);
        for (m, action) in &a.matches {
            let rule = &self.rules.rules[m.rule];
            let label = rule.label(m.source);
            let location = format!("{}:{}", target_name(m.target), m.field);
            report(&Finding {
                rule: &label,
                counted_only: *action == RuleAction::Count,
                location: &location,
                excerpt: &m.excerpt,
            });
        }
        if let Some(problem) = a.body_problem {
            // Unread is unjudged: a body the WAF cannot read never passes as if it were clean.
            let (status, rule) = problem.refusal();
            return Verdict::Deny(Deny::new(status, rule));
        }
        if a.score < self.threshold {
            return Verdict::Continue;
        }
        // Name the most severe blocking rule; the score says the rest.
        let worst = a
            .matches
            .iter()
            .filter(|(_, action)| *action == RuleAction::Block)
            .max_by_key(|(m, _)| self.rules.rules[m.rule].severity)
            .map(|(m, _)| self.rules.rules[m.rule].label(m.source));
        Verdict::Deny(Deny::new(
            403,
            worst.unwrap_or_else(|| format!("{}.anomaly_score", self.name)),
        ))
    }
}
