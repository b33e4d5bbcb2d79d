use std::borrow::Cow;

use std::future::Future;
use std::pin::Pin;

use http::{HeaderName, HeaderValue};

use crate::request::Identity;
use crate::RequestView;

/// A security plugin: one decision over the request view.
///
/// Implementations are immutable once built; configuration changes build a new plugin.
pub trait Plugin: Send + Sync {
    /// The plugin's type name, as written in config and used as a metrics label.
    fn name(&self) -> &'static str;

    /// Judge the request, reporting each rule that matched on the way (for metrics and the
    /// block log, count-mode matches included); plugins without rules of their own report
    /// nothing.
    fn check_reporting(
        &self,
        req: &RequestView<'_>,
        report: &mut dyn FnMut(&Finding<'_>),
    ) -> Verdict;

    /// Judge the request, with no one listening for the rules that matched.
    fn check(&self, req: &RequestView<'_>) -> Verdict {
        self.check_reporting(req, &mut |_| {})
    }

    /// A decision that needs a store shared with other instances (cluster rate limits): the
    /// chain awaits the future instead of calling [`Plugin::check_reporting`]. `None`, the
    /// default, means the plugin decides locally for this request.
    fn check_shared<'a>(&'a self, _req: &'a RequestView<'_>) -> Option<VerdictFuture<'a>> {
        None
    }

    /// Request headers this plugin consumes that must never travel upstream
    /// (shared secrets, for instance).
    fn consumed_headers(&self) -> &[HeaderName] {
        &[]
    }

    /// How many rules this plugin holds (a WAF's rule set), for the reload log.
    fn rule_count(&self) -> usize {
        0
    }

    /// The route names this plugin's configuration refers to: each must name a route of its
    /// listener, or the configuration is refused (a misspelt route would change nothing).
    fn route_names(&self) -> Vec<&str> {
        Vec::new()
    }

    /// Whether this plugin reads the request body; the proxy then delivers it
    /// ([`RequestView::body`]) before any of it reaches an upstream.
    fn inspects_body(&self) -> bool {
        false
    }

    /// Whether a connection from `peer` is refused at accept, before TLS or HTTP: only for
    /// plugins that would refuse every request from it whatever it asks.
    fn refuses_connection(&self, _peer: std::net::IpAddr) -> bool {
        false
    }

    /// Why this plugin decides what it decides, one line per finding, for `rampart rules test`.
    fn explain(&self, req: &RequestView<'_>) -> Vec<String> {
        match self.check(req) {
            Verdict::Continue | Verdict::Authenticated(_) => Vec::new(),
            Verdict::Deny(d) => vec![format!("refuses with {} ({})", d.status, d.rule)],
        }
    }
}

pub type VerdictFuture<'a> = Pin<Box<dyn Future<Output = Verdict> + Send + 'a>>;

/// Polls `future` once and returns its output if it is ready: for callers without a runtime
/// (benchmarks, tests) over chains whose plugins all decide locally.
pub fn now_or_never<F: Future>(future: F) -> Option<F::Output> {
    let future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

/// A rule that matched inside a plugin, whether or not the request is refused.
#[derive(Debug, Clone, Copy)]
pub struct Finding<'a> {
    pub rule: &'a str,
    /// The rule is in count mode: it matched but adds nothing towards a refusal.
    pub counted_only: bool,
    /// Where it matched: `<target>:<field>` (`args:user`, `headers:user-agent`).
    pub location: &'a str,
    /// What matched, decoded, cut short.
    pub excerpt: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Continue,
    /// Continue, and this is who the caller is: later plugins see it in
    /// [`RequestView::identity`].
    Authenticated(std::sync::Arc<Identity>),
    Deny(Deny),
}

/// Why and how a request is refused, or answered by rampart itself instead of an upstream
/// (a challenge page, a challenge's pass).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deny {
    pub status: u16,
    /// Stable rule identifier: shown to the client, used as a metrics label. Never secret.
    pub rule: Cow<'static, str>,
    /// Headers the refusal carries (`Retry-After` on a 429, say).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The precise reason, for metrics and the log only, when the client is told less
    /// (`jwt.expired` behind `jwt.invalid_token`).
    pub detail: Option<&'static str>,
    /// The body the client gets, when it is not the usual JSON refusal.
    pub page: Option<Page>,
}

/// A body of rampart's own, with its media type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub content_type: &'static str,
    pub body: String,
}

impl Page {
    pub fn html(body: String) -> Self {
        Page {
            content_type: "text/html; charset=utf-8",
            body,
        }
    }

    pub fn text(body: &str) -> Self {
        Page {
            content_type: "text/plain; charset=utf-8",
            body: body.to_string(),
        }
    }
}

impl Deny {
    pub fn new(status: u16, rule: impl Into<Cow<'static, str>>) -> Self {
        Deny {
            status,
            rule: rule.into(),
            headers: Vec::new(),
            detail: None,
            page: None,
        }
    }

    pub fn with_detail(mut self, detail: &'static str) -> Self {
        self.detail = Some(detail);
        self
    }

    /// What metrics and logs call this refusal: the detail when there is one.
    pub fn reason(&self) -> &str {
        self.detail.unwrap_or(&self.rule)
    }

    pub fn with_header(mut self, name: HeaderName, value: impl Into<HeaderValue>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn with_page(mut self, page: Page) -> Self {
        self.page = Some(page);
        self
    }
}
