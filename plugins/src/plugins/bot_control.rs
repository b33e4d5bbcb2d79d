//! `bot_control`: the common level of AWS Bot Control. A user-agent catalogue (a rule file
//! of categories, each a list of user-agent fragments and an action) and four signals: a
//! missing user agent, a non-browser one, an automated (headless) browser, and a request
//! from a datacenter network. Search-engine bots are verified by their published networks:
//! a verified one is labelled and let through, one that only claims the name is not.
//!
//! API clients are bots by nature; a caller presenting a valid API key is exempt.
//!
//! A category or signal may also `challenge`: a browser is sent a proof of work to solve
//! and comes back with a pass ([`crate::challenge`]), an API client is refused in JSON.

use std::collections::HashMap;

use aho_corasick::{AhoCorasick, MatchKind};
use http::header::{ACCEPT, COOKIE, LOCATION, SET_COOKIE, USER_AGENT};
use http::HeaderValue;
use serde::Deserialize;

use crate::challenge::{self, Binding, ChallengeConfig, Challenger};
use crate::prefix_table::PrefixTable;
use crate::registry::{parse_rule_file, BuildContext, BuildError};
use crate::verdict::Page;
use crate::{Deny, Finding, Plugin, RequestView, SharedSecret, Verdict};

/// What bot control does with a category or signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BotAction {
    Block,
    Count,
    /// Let the request through without asking the other bot rules.
    Allow,
    /// A browser must solve a proof of work first (`challenge` settings); an API client
    /// is refused.
    Challenge,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BotControlConfig {
    /// The catalogue file(s), relative to the rules directory.
    #[serde(default = "default_catalogue")]
    pub catalogue: Vec<String>,
    /// Networks of datacenters and clouds (list files), for `SignalKnownBotDataCenter`.
    #[serde(default)]
    pub datacenter_networks: Vec<String>,
    /// Category or signal name -> action, over what the catalogue says.
    #[serde(default)]
    pub overrides: HashMap<String, BotAction>,
    /// A secret (`[secrets]`) whose values are API keys; a request bearing one in
    /// `Authorization: Bearer` or `x-api-key` is not judged as a bot.
    pub exempt_api_keys: Option<String>,
    /// Routes whose callers are not judged at all (machine-to-machine APIs).
    #[serde(default)]
    pub exempt_routes: Vec<String>,
    /// Callers a `jwt` plugin earlier in the chain verified are not judged: API clients
    /// are bots by nature.
    #[serde(default)]
    pub exempt_authenticated: bool,
    /// The challenge's key, difficulty and pass lifetime: needed once an action is
    /// `challenge`.
    pub challenge: Option<ChallengeConfig>,
}

fn default_catalogue() -> Vec<String> {
    vec!["bots/catalogue.toml".to_string()]
}

/// The catalogue file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Catalogue {
    #[serde(default)]
    signals: HashMap<String, BotAction>,
    #[serde(default)]
    categories: Vec<CategoryConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CategoryConfig {
    name: String,
    action: BotAction,
    /// Case-insensitive fragments of the user agent.
    user_agents: Vec<String>,
    /// List files of the networks the category's real bots come from: a match from
    /// elsewhere is a spoofed claim and gets `unverified_action`.
    #[serde(default)]
    verify_networks: Vec<String>,
    #[serde(default = "block")]
    unverified_action: BotAction,
}

fn block() -> BotAction {
    BotAction::Block
}

struct Category {
    name: String,
    action: BotAction,
    verified_by: Option<PrefixTable>,
    unverified_action: BotAction,
    unverified_name: String,
}

/// The signals, by their AWS rule names.
const NO_USER_AGENT: &str = "SignalNoUserAgent";
const NON_BROWSER: &str = "SignalNonBrowserUserAgent";
const AUTOMATED: &str = "SignalAutomatedBrowser";
const DATACENTER: &str = "SignalKnownBotDataCenter";
const SIGNALS: [&str; 4] = [NO_USER_AGENT, NON_BROWSER, AUTOMATED, DATACENTER];

/// User-agent fragments of browsers driven by programs.
const HEADLESS_MARKERS: &[&str] = &[
    "headlesschrome",
    "phantomjs",
    "selenium",
    "webdriver",
    "puppeteer",
    "playwright",
    "slimerjs",
    "electron/",
];

pub struct BotControl {
    categories: Vec<Category>,
    /// One pattern per catalogue fragment; `pattern_category[i]` is its category.
    user_agents: AhoCorasick,
    pattern_category: Vec<usize>,
    headless: AhoCorasick,
    signals: HashMap<&'static str, BotAction>,
    datacenters: PrefixTable,
    api_keys: Option<SharedSecret>,
    exempt_routes: Vec<String>,
    exempt_authenticated: bool,
    challenger: Option<Challenger>,
}

/// What bot control makes of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BotLabels<'a> {
    /// The catalogue category matched, with its action (after verification).
    pub category: Option<(&'a str, BotAction)>,
    pub signals: Vec<(&'static str, BotAction)>,
}

impl BotControl {
    pub fn build(config: BotControlConfig, ctx: &dyn BuildContext) -> Result<Self, BuildError> {
        let invalid = |m: String| BuildError::invalid("bot_control", &m);
        let mut catalogue = Catalogue {
            signals: HashMap::new(),
            categories: Vec::new(),
        };
        for path in &config.catalogue {
            for (file, text) in ctx.rule_files(path)? {
                let part: Catalogue = parse_rule_file(&file, &text)?;
                catalogue.signals.extend(part.signals);
                catalogue.categories.extend(part.categories);
            }
        }
        let lists = |files: &[String]| ctx.ip_lists(files).map(PrefixTable::new);
        let mut names: Vec<&str> = SIGNALS.to_vec();
        let mut categories = Vec::new();
        let mut patterns = Vec::new();
        let mut pattern_category = Vec::new();
        for c in &catalogue.categories {
            if names.contains(&c.name.as_str()) {
                return Err(invalid(format!("category {:?} is defined twice", c.name)));
            }
            names.push(&c.name);
            for ua in &c.user_agents {
                patterns.push(ua.to_ascii_lowercase());
                pattern_category.push(categories.len());
            }
            let unverified_name = format!("{}_Unverified", c.name);
            categories.push(Category {
                action: config.overrides.get(&c.name).copied().unwrap_or(c.action),
                verified_by: if c.verify_networks.is_empty() {
                    None
                } else {
                    Some(lists(&c.verify_networks)?)
                },
                unverified_action: config
                    .overrides
                    .get(&unverified_name)
                    .copied()
                    .unwrap_or(c.unverified_action),
                unverified_name,
                name: c.name.clone(),
            });
        }
        if let Some(unknown) = config.overrides.keys().find(|k| {
            !names.contains(&k.as_str()) && !categories.iter().any(|c| &c.unverified_name == *k)
        }) {
            return Err(invalid(format!(
                "override {unknown:?} names no category or signal; known: {}",
                names.join(", ")
            )));
        }
        let mut signals = HashMap::new();
        for name in SIGNALS {
            let action = config
                .overrides
                .get(name)
                .or(catalogue.signals.get(name))
                .copied()
                .unwrap_or(BotAction::Count);
            signals.insert(name, action);
        }
        if let Some(unknown) = catalogue
            .signals
            .keys()
            .find(|k| !SIGNALS.contains(&k.as_str()))
        {
            return Err(invalid(format!(
                "signal {unknown:?} is not one of {}",
                SIGNALS.join(", ")
            )));
        }
        // Leftmost-first: where fragments overlap, the category listed first wins.
        let user_agents = AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::LeftmostFirst)
            .build(&patterns)
            .map_err(|e| invalid(format!("user-agent patterns: {e}")))?;
        let headless = AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .build(HEADLESS_MARKERS)
            .map_err(|e| invalid(format!("headless markers: {e}")))?;
        let challenges = categories
            .iter()
            .flat_map(|c| [c.action, c.unverified_action])
            .chain(signals.values().copied())
            .any(|a| a == BotAction::Challenge);
        let challenger = match (&config.challenge, challenges) {
            (Some(settings), _) => {
                Some(Challenger::new(ctx.secret(&settings.secret)?, settings).map_err(invalid)?)
            }
            (None, true) => {
                return Err(invalid(
                    "an action is \"challenge\" but there are no [challenge] settings \
                     (secret, difficulty_bits, pass_ttl_s)"
                        .into(),
                ))
            }
            (None, false) => None,
        };
        Ok(BotControl {
            challenger,
            categories,
            user_agents,
            pattern_category,
            headless,
            signals,
            datacenters: lists(&config.datacenter_networks)?,
            api_keys: config
                .exempt_api_keys
                .map(|name| ctx.secret(&name))
                .transpose()?,
            exempt_routes: config.exempt_routes,
            exempt_authenticated: config.exempt_authenticated,
        })
    }

    fn exempt(&self, req: &RequestView<'_>) -> bool {
        if self.exempt_routes.iter().any(|r| r == req.route)
            || (self.exempt_authenticated && req.identity.is_some())
        {
            return true;
        }
        let Some(keys) = &self.api_keys else {
            return false;
        };
        let bearer = req
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
        let api_key = req.headers.get("x-api-key").map(|v| v.as_bytes());
        [bearer, api_key]
            .into_iter()
            .flatten()
            .any(|k| keys.matches(k))
    }

    /// Labels the request: its catalogue category and the signals it raises.
    pub fn classify(&self, req: &RequestView<'_>) -> BotLabels<'_> {
        let mut signals = Vec::new();
        let mut category = None;
        let ua = req.headers.get(USER_AGENT).map(|v| v.as_bytes());
        match ua {
            None => signals.push((NO_USER_AGENT, self.signals[NO_USER_AGENT])),
            Some(ua) if ua.iter().all(u8::is_ascii_whitespace) => {
                signals.push((NO_USER_AGENT, self.signals[NO_USER_AGENT]))
            }
            Some(ua) => {
                if let Some(m) = self.user_agents.find(ua) {
                    let c = &self.categories[self.pattern_category[m.pattern().as_usize()]];
                    category = Some(match &c.verified_by {
                        Some(nets) if !nets.contains(req.client) => {
                            (c.unverified_name.as_str(), c.unverified_action)
                        }
                        _ => (c.name.as_str(), c.action),
                    });
                }
                if self.headless.is_match(ua) {
                    signals.push((AUTOMATED, self.signals[AUTOMATED]));
                }
                if !ua.starts_with(b"Mozilla/") {
                    signals.push((NON_BROWSER, self.signals[NON_BROWSER]));
                }
            }
        }
        if self.datacenters.contains(req.client) {
            signals.push((DATACENTER, self.signals[DATACENTER]));
        }
        BotLabels { category, signals }
    }
}

impl Plugin for BotControl {
    fn route_names(&self) -> Vec<&str> {
        self.exempt_routes.iter().map(String::as_str).collect()
    }

    fn name(&self) -> &'static str {
        "bot_control"
    }

    fn check_reporting(
        &self,
        req: &RequestView<'_>,
        report: &mut dyn FnMut(&Finding<'_>),
    ) -> Verdict {
        if self.exempt(req) {
            return Verdict::Continue;
        }
        let labels = self.classify(req);
        let ua = req
            .headers
            .get(USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let cut = ua.char_indices().nth(80).map_or(ua.len(), |(i, _)| i);
        let excerpt = &ua[..cut];
        let decided = labels
            .category
            .into_iter()
            .chain(labels.signals.iter().copied());
        let mut passed = None;
        for (name, action) in decided {
            let finding = |counted_only| Finding {
                rule: name,
                counted_only,
                location: "headers:user-agent",
                excerpt,
            };
            match action {
                BotAction::Allow => return Verdict::Continue,
                BotAction::Block => return Verdict::Deny(Deny::new(403, name.to_string())),
                BotAction::Count => report(&finding(true)),
                BotAction::Challenge => {
                    let Some(challenger) = &self.challenger else {
                        continue;
                    };
                    let now = challenge::unix_now();
                    let who = Binding::new(req.client, ua.as_bytes());
                    if *passed
                        .get_or_insert_with(|| challenger.has_pass(&who, cookie_headers(req), now))
                    {
                        continue;
                    }
                    report(&finding(false));
                    return Verdict::Deny(challenge_answer(req, challenger, &who, now, report));
                }
            }
        }
        Verdict::Continue
    }

    fn explain(&self, req: &RequestView<'_>) -> Vec<String> {
        if self.exempt(req) {
            return vec!["exempt (route or API key)".to_string()];
        }
        let labels = self.classify(req);
        labels
            .category
            .into_iter()
            .chain(labels.signals)
            .map(|(name, action)| format!("labelled {name} ({action:?})"))
            .collect()
    }
}

/// What a request judged "challenge" without a pass gets: for an answer to its page, its
/// pass and itself again (303); for a browser, the page (202, as AWS WAF answers a
/// challenge: the request is neither served nor refused yet); for an API client, a refusal.
fn challenge_answer(
    req: &RequestView<'_>,
    challenger: &Challenger,
    who: &Binding,
    now: u64,
    report: &mut dyn FnMut(&Finding<'_>),
) -> Deny {
    let answer = challenge::answer(cookie_headers(req));
    let clear_answer = HeaderValue::from_static(challenge::CLEAR_ANSWER);
    if let Some(answer) = answer {
        match challenger.redeem(who, answer, now) {
            Ok(pass) => {
                if let (Ok(pass), Ok(back)) = (
                    HeaderValue::from_str(&pass),
                    HeaderValue::from_str(&own_address(req)),
                ) {
                    return Deny::new(303, "challenge.solved")
                        .with_header(LOCATION, back)
                        .with_header(SET_COOKIE, pass)
                        .with_header(SET_COOKIE, clear_answer)
                        .with_page(Page::text(""));
                }
            }
            Err(e) => report(&Finding {
                rule: "challenge.failed",
                counted_only: true,
                location: "headers:cookie",
                excerpt: match e {
                    challenge::ChallengeError::Malformed => "malformed",
                    challenge::ChallengeError::Forged => "forged or another client's",
                    challenge::ChallengeError::Expired => "expired",
                    challenge::ChallengeError::WrongProof => "wrong proof of work",
                },
            }),
        }
    }
    let browser = req.headers.get_all(ACCEPT).iter().any(|v| {
        v.as_bytes()
            .windows(9)
            .any(|w| w.eq_ignore_ascii_case(b"text/html"))
    });
    match challenger.issue(who, now) {
        Some(challenge) if browser => {
            let mut deny = Deny::new(202, "challenge.issued")
                .with_page(Page::html(challenger.page(&challenge)));
            if answer.is_some() {
                deny = deny.with_header(SET_COOKIE, clear_answer);
            }
            deny
        }
        _ => Deny::new(403, "challenge.required"),
    }
}

/// The request's `Cookie` headers, where the challenge's answer and pass travel.
fn cookie_headers<'a>(req: &RequestView<'a>) -> impl Iterator<Item = &'a [u8]> {
    req.headers
        .get_all(COOKIE)
        .iter()
        .map(HeaderValue::as_bytes)
}

/// The request's own address, to send it back to itself: its path (as rampart normalised
/// it, percent-encoded again) and its query as sent. Always a path on this site.
fn own_address(req: &RequestView<'_>) -> String {
    let mut out = String::with_capacity(req.path.len() + 16);
    for b in req.path.bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~!$&'()*+,;=:@".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    // Normalised paths have no empty segments, so never `//host`, which a browser would
    // read as another site; checked all the same.
    if !out.starts_with('/') || out.starts_with("//") {
        out = String::from("/");
    }
    if let Some(q) = req.query {
        out.push('?');
        out.push_str(q);
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::plugins::testing::TestRequest;
    use crate::registry::tests::TestContext;

    /// The shipped catalogue and lists.
    pub(crate) fn ctx() -> TestContext {
        TestContext::new()
            .with_file(
                "bots/catalogue.toml",
                include_str!("../../../rules/bots/catalogue.toml"),
            )
            .with_file(
                "bots/search-engines.txt",
                include_str!("../../../rules/bots/search-engines.txt"),
            )
            .with_file(
                "bots/datacenters.txt",
                include_str!("../../../rules/bots/datacenters.txt"),
            )
    }

    fn plugin(extra: &str) -> BotControl {
        let config: BotControlConfig = toml::from_str(&format!(
            "datacenter_networks = [\"bots/datacenters.txt\"]\n{extra}"
        ))
        .expect("config parses");
        BotControl::build(config, &ctx()).expect("builds")
    }

    fn judge(p: &BotControl, peer: &str, ua: Option<&str>) -> (u16, Vec<String>) {
        let mut req = TestRequest::new(peer, "/v1/chat/completions");
        if let Some(ua) = ua {
            req = req.header("User-Agent", ua);
        }
        let mut labels = Vec::new();
        let v = p.check_reporting(&req.view(), &mut |f| labels.push(f.rule.to_string()));
        match v {
            Verdict::Continue | Verdict::Authenticated(_) => (200, labels),
            Verdict::Deny(d) => {
                labels.push(d.rule.to_string());
                (d.status, labels)
            }
        }
    }

    const CHROME: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36";

    #[test]
    fn browsers_pass_unlabelled() {
        assert_eq!(
            judge(&plugin(""), "198.51.100.1", Some(CHROME)),
            (200, vec![])
        );
    }

    #[test]
    fn the_platforms_own_clients_are_counted_not_blocked() {
        let p = plugin("");
        for ua in [
            "OpenAI/Python 1.54.0",
            "curl/8.5.0",
            "python-requests/2.32.3",
        ] {
            let (status, labels) = judge(&p, "198.51.100.1", Some(ua));
            assert_eq!(status, 200, "{ua}");
            assert_eq!(
                labels,
                ["CategoryHttpLibrary", "SignalNonBrowserUserAgent"],
                "{ua}"
            );
        }
        let (status, labels) = judge(&p, "10.20.0.9", Some("Prometheus/2.42.0"));
        assert_eq!((status, labels), (200, vec![]), "monitoring is allowed");
    }

    #[test]
    fn scanners_scrapers_and_headless_browsers_are_blocked() {
        let p = plugin("");
        for (ua, rule) in [
            ("sqlmap/1.7.2#stable (https://sqlmap.org)", "CategorySecurityScanner"),
            ("Mozilla/5.00 (Nikto/2.1.6) (Evasions:None)", "CategorySecurityScanner"),
            ("Scrapy/2.11 (+https://scrapy.org)", "CategoryScrapingFramework"),
            (
                "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 HeadlessChrome/126.0 Safari/537.36",
                "SignalAutomatedBrowser",
            ),
        ] {
            let (status, labels) = judge(&p, "198.51.100.1", Some(ua));
            assert_eq!(status, 403, "{ua}");
            assert_eq!(labels.last().map(String::as_str), Some(rule), "{ua}");
        }
    }

    #[test]
    fn search_engines_are_verified_by_network() {
        let p = plugin("");
        let googlebot = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
        assert_eq!(judge(&p, "66.249.66.1", Some(googlebot)), (200, vec![]));
        let (status, labels) = judge(&p, "198.51.100.1", Some(googlebot));
        assert_eq!(
            (status, labels.as_slice()),
            (403, &["CategorySearchEngine_Unverified".to_string()][..])
        );
    }

    #[test]
    fn missing_agents_and_datacenters_are_signals() {
        let p = plugin("");
        assert_eq!(judge(&p, "198.51.100.1", None).1, ["SignalNoUserAgent"]);
        assert_eq!(
            judge(&p, "3.5.140.2", Some(CHROME)).1,
            ["SignalKnownBotDataCenter"]
        );
    }

    #[test]
    fn overrides_and_exemptions() {
        let p = plugin("overrides = { CategoryHttpLibrary = \"block\" }\nexempt_api_keys = \"admin\"\nexempt_routes = [\"machine\"]");
        assert_eq!(judge(&p, "198.51.100.1", Some("curl/8.5.0")).0, 403);
        let keyed = TestRequest::new("198.51.100.1", "/v1/chat/completions")
            .header("User-Agent", "curl/8.5.0")
            .header("Authorization", "Bearer s3cret-admin");
        assert_eq!(p.check(&keyed.view()), Verdict::Continue, "a valid API key");
        let wrong = TestRequest::new("198.51.100.1", "/")
            .header("User-Agent", "curl/8.5.0")
            .header("Authorization", "Bearer guess");
        assert!(matches!(p.check(&wrong.view()), Verdict::Deny(_)));
        let config: BotControlConfig =
            toml::from_str("overrides = { CategoryHttpLibrarry = \"block\" }").expect("parses");
        let e = BotControl::build(config, &ctx())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("CategoryHttpLibrarry"), "{e}");
    }

    #[test]
    fn a_broken_catalogue_names_file_and_line() {
        let ctx = TestContext::new().with_file(
            "bots/catalogue.toml",
            "[[categories]]\nname = \"x\"\naction = \"maybe\"\nuser_agents = []\n",
        );
        let e = BotControl::build(toml::from_str("").expect("parses"), &ctx)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.starts_with("bots/catalogue.toml:3"), "{e}");
    }

    #[test]
    fn a_challenge_needs_its_settings_and_answers_browsers_and_api_clients_apart() {
        let config = |extra: &str| -> BotControlConfig {
            toml::from_str(&format!(
                "overrides = {{ SignalNonBrowserUserAgent = \"challenge\" }}\n{extra}"
            ))
            .expect("parses")
        };
        let e = BotControl::build(config(""), &ctx())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("no [challenge] settings"), "{e}");
        let e = BotControl::build(config("challenge = { secret = \"nope\" }"), &ctx())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("nope"), "{e}");
        let p = BotControl::build(
            config("challenge = { secret = \"admin\", difficulty_bits = 4 }"),
            &ctx(),
        )
        .expect("builds");
        let ask = |accept: &str, cookie: Option<&str>| {
            let mut req = TestRequest::new("198.51.100.7", "/docs/a b")
                .header("User-Agent", "curl/8.5.0")
                .header("Accept", accept);
            if let Some(c) = cookie {
                req = req.header("Cookie", c);
            }
            match p.check(&req.view()) {
                Verdict::Deny(d) => d,
                other => panic!("not challenged: {other:?}"),
            }
        };
        let api = ask("application/json", None);
        assert_eq!(
            (api.status, &*api.rule, api.page.is_none()),
            (403, "challenge.required", true)
        );
        let page = ask("text/html", None);
        assert_eq!((page.status, &*page.rule), (202, "challenge.issued"));
        let html = page.page.expect("a page").body;
        let challenge = html
            .split("var challenge = \"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .expect("challenge");
        let n = (0u64..)
            .map(|n| n.to_string())
            .find(|n| challenge::leading_zero_bits(challenge, n) >= 4)
            .expect("solution");
        let solved = ask(
            "text/html",
            Some(&format!("rampart_answer={challenge}~{n}")),
        );
        assert_eq!((solved.status, &*solved.rule), (303, "challenge.solved"));
        let header = |name: &http::HeaderName| {
            solved
                .headers
                .iter()
                .filter(|(k, _)| k == name)
                .filter_map(|(_, v)| v.to_str().ok())
                .collect::<Vec<_>>()
        };
        assert_eq!(header(&LOCATION), ["/docs/a%20b"]);
        let pass = header(&SET_COOKIE)[0]
            .split(';')
            .next()
            .expect("pass")
            .to_string();
        let mut req = TestRequest::new("198.51.100.7", "/docs")
            .header("User-Agent", "curl/8.5.0")
            .header("Cookie", &pass);
        assert!(matches!(p.check(&req.view()), Verdict::Continue));
        req = TestRequest::new("198.51.100.8", "/docs")
            .header("User-Agent", "curl/8.5.0")
            .header("Cookie", &pass);
        assert!(matches!(p.check(&req.view()), Verdict::Deny(_)));
    }
}
