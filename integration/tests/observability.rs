//! VictoriaMetrics (Debian's `victoria-metrics`) as the seed draws it: the :9090 upstream,
//! which Grafana (here, the test) queries through rampart from the VPC, and the scraper of
//! rampart's admin `/metrics` and of LiteLLM's `/metrics/` through rampart :80. After
//! traffic, every query of the shipped Grafana dashboard (monitoring/grafana-dashboard.json)
//! returns series; the alerting rules pass `promtool check rules` and `promtool test rules`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rampart_integration::identity::{openai_client, Litellm, Llmock};
use rampart_integration::*;
use serde_json::Value;

const VPC: &str = "127.0.0.1/32";
const MASTER_KEY: &str = "sk-master-test-0123456789";

fn monitoring() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../monitoring")
}

#[test]
fn alerting_rules_pass_promtool_check_and_their_unit_tests() {
    for args in [
        vec!["check", "rules", "alerts.yml"],
        vec!["test", "rules", "alerts_test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(&args)
            .current_dir(monitoring())
            .output()
            .expect("promtool (Debian's prometheus package; scripts/deps.sh test)");
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `victoria-metrics` on `addr`, scraping `targets` (job, address, path, bearer token)
/// every second.
struct VictoriaMetrics {
    child: Child,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl VictoriaMetrics {
    async fn start(addr: std::net::SocketAddr, targets: &[(&str, String, &str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("vm dir");
        let mut scrape = String::from("global:\n  scrape_interval: 1s\nscrape_configs:\n");
        for (job, target, path, token) in targets {
            scrape.push_str(&format!(
                "  - job_name: {job}\n    metrics_path: {path}\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ));
            if !token.is_empty() {
                scrape.push_str(&format!("    bearer_token: {token}\n"));
            }
        }
        let config = dir.path().join("scrape.yml");
        std::fs::write(&config, scrape).expect("scrape config");
        let child = Command::new("victoria-metrics")
            .arg(format!("-httpListenAddr={addr}"))
            .arg(format!(
                "-storageDataPath={}",
                dir.path().join("data").display()
            ))
            .arg(format!("-promscrape.config={}", config.display()))
            .args([
                "-search.latencyOffset=0s",
                "-search.disableCache",
                "-loggerLevel=ERROR",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("victoria-metrics (Debian package; scripts/deps.sh test)");
        let vm = VictoriaMetrics {
            child,
            addr,
            _dir: dir,
        };
        let up = eventually(Duration::from_secs(30), || async {
            let probe = b"GET /health HTTP/1.1\r\nHost: vm\r\nConnection: close\r\n\r\n";
            send_raw(vm.addr, "127.0.0.1", probe)
                .await
                .is_ok_and(|r| r.status == 200)
        })
        .await;
        assert!(up, "victoria-metrics did not come up");
        vm
    }
}

impl Drop for VictoriaMetrics {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An instant PromQL query, as Grafana sends it, through rampart :9090 from `source`.
async fn query(rampart: &Rampart, source: &str, promql: &str) -> RawResponse {
    let encoded: String = promql
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    let path = format!("/api/v1/query?query={encoded}");
    request(rampart.addr("victoriametrics"), source, "GET", &path, &[]).await
}

fn series(answer: &RawResponse) -> usize {
    let v: Value = answer.json();
    v["data"]["result"].as_array().map_or(0, Vec::len)
}

/// The shipped rules with what the dashboard's panels need to have data: a provider route
/// (llmock behind it) for the LLM panels, and a shared rate-limit store that is down.
fn rules_with_everything(
    llmock: std::net::SocketAddr,
    upstreams: &[(&str, std::net::SocketAddr)],
) -> Vec<(String, String)> {
    let mut files = shipped_rules_in(VPC, upstreams);
    for (name, text) in &mut files {
        if name == "gateway.toml" {
            let provider_route =
                "# [[listeners.routes]]\n# prefix = \"/providers/v1/\"\n# models = true\n";
            assert!(
                text.contains(provider_route),
                "the shipped provider route moved"
            );
            *text = text.replacen(
                provider_route,
                "[[listeners.routes]]\nprefix = \"/providers/v1/\"\nmodels = true\n",
                1,
            );
            let limit = "limits = [{ name = \"RateLimitPerIP\"";
            assert!(text.contains(limit));
            *text = text.replacen(limit, &format!("shared = true\n{limit}"), 1);
            text.push_str(&format!(
                "\n[secrets.openai-api-key]\nenv = [\"TEST_OPENAI_KEY\"]\n\n[rate_limit_store]\nredis = \"redis://127.0.0.1:{}\"\n",
                free_port()
            ));
        }
        if name == "models.toml" {
            *text = format!(
                "[providers.openai]\nkind = \"openai\"\nbase_url = \"http://{llmock}/v1\"\nkey = \"openai-api-key\"\n\n[[models]]\nname = \"gpt-*\"\ntargets = [{{ provider = \"openai\" }}]\n"
            );
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn victoria_metrics_serves_9090_scrapes_through_80_and_every_panel_has_data() {
    let llmock = Llmock::start().await;
    let langfuse = RecordingUpstream::start("langfuse").await;
    let grafana = RecordingUpstream::start("grafana").await;
    let litellm_addr = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let vm_addr = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let files = rules_with_everything(
        llmock.addr,
        &[
            ("litellm", litellm_addr),
            ("grafana", grafana.addr),
            ("langfuse", langfuse.addr),
            ("victoriametrics", vm_addr),
        ],
    );
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    let rampart = Rampart::start_full(
        &files,
        SEED_LISTENERS,
        &[("TEST_OPENAI_KEY", "sk-test-openai")],
        &[],
    )
    .await;
    let config = format!(
        "model_list:\n  - model_name: gpt-4o-mini\n    litellm_params:\n      model: openai/gpt-4o-mini\n      api_base: http://{}/v1\n      api_key: sk-llmock\nlitellm_settings:\n  success_callback: [\"prometheus\"]\ngeneral_settings:\n  master_key: {MASTER_KEY}\n",
        llmock.addr
    );
    let _litellm = Litellm::start(
        litellm_addr.port(),
        &config,
        &[("LITELLM_LOCAL_MODEL_COST_MAP", "True")],
    )
    .await;
    let web = rampart.addr("web").to_string();
    let vm = VictoriaMetrics::start(
        vm_addr,
        &[
            ("rampart", rampart.admin.to_string(), "/metrics", ""),
            // VictoriaMetrics -> LiteLLM /metrics/ on :80, from the VPC (seed 003), with
            // LiteLLM's own credential, which rampart passes through.
            ("litellm", web, "/metrics/", MASTER_KEY),
        ],
    )
    .await;

    // Traffic for every panel: LLM calls through LiteLLM and through a provider route
    // (tokens, time to first token), a refused attack, counted API clients, an upstream
    // down, a malformed request, a reload.
    let via_litellm = format!("http://{}/v1", rampart.addr("web"));
    let via_provider = format!("http://{}/providers/v1", rampart.addr("web"));
    for stream in [false, true] {
        let r = openai_client(&via_litellm, MASTER_KEY, ORIGIN_SECRET, stream);
        assert_eq!(r["ok"], true, "through LiteLLM: {r}");
        let r = openai_client(&via_provider, "sk-client", ORIGIN_SECRET, stream);
        assert_eq!(r["ok"], true, "provider route: {r}");
    }
    let attack = request(
        rampart.addr("web"),
        EXTERNAL_PEER,
        "GET",
        "/v1/models?id=1%27%20UNION%20SELECT%20password%20FROM%20users--",
        &[("X-Origin-Verify", ORIGIN_SECRET)],
    )
    .await;
    assert_eq!(attack.status, 403);
    grafana.stop();
    let down = request(
        rampart.addr("web"),
        EXTERNAL_PEER,
        "GET",
        "/grafana/api/health",
        &[("X-Origin-Verify", ORIGIN_SECRET)],
    )
    .await;
    assert_eq!(down.status, 502);
    // A header line past the 16 KiB cap: 431, and a close for a limit.
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let r = send_raw_refusable(rampart.addr("web"), EXTERNAL_PEER, huge.as_bytes()).await;
    assert_eq!(r.map(|r| r.status).ok(), Some(431));
    // curl from outside: bot control counts HTTP libraries (count mode).
    let curl = format!("GET /health/readiness HTTP/1.1\r\nHost: gateway.test\r\nUser-Agent: curl/8.5.0\r\nX-Origin-Verify: {ORIGIN_SECRET}\r\nConnection: close\r\n\r\n");
    let r = send_raw(rampart.addr("web"), EXTERNAL_PEER, curl.as_bytes())
        .await
        .expect("curl");
    assert_eq!(r.status, 200);
    assert_eq!(rampart.admin_post("/reload").await.status, 200);

    // Grafana's queries from the VPC pass; from outside :9090 is closed.
    let outside = query(&rampart, EXTERNAL_PEER, "up").await;
    assert_eq!(outside.status, 403);
    let scraped = eventually(Duration::from_secs(60), || async {
        let r = query(&rampart, "127.0.0.1", "up == 1").await;
        r.status == 200 && series(&r) == 2
    })
    .await;
    let scrapes: Vec<String> = rampart
        .stdout_text()
        .lines()
        .filter(|l| l.contains("/metrics/"))
        .take(3)
        .map(String::from)
        .collect();
    assert!(
        scraped,
        "both scrapes up: {:?}\nrampart: {scrapes:#?}",
        query(&rampart, "127.0.0.1", "up").await.json()
    );
    let litellm_series = query(&rampart, "127.0.0.1", "count({job=\"litellm\"})").await;
    assert!(
        litellm_series.json()["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            > 10,
        "LiteLLM's own metrics, scraped through :80"
    );

    let dashboard: Value = serde_json::from_slice(
        &std::fs::read(monitoring().join("grafana-dashboard.json")).expect("dashboard"),
    )
    .expect("dashboard JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 12, "the dashboard has its panels");
    let mut empty = Vec::new();
    let ready = eventually(Duration::from_secs(60), || {
        let rampart = &rampart;
        let panels = panels.clone();
        async move {
            for panel in &panels {
                for target in panel["targets"].as_array().into_iter().flatten() {
                    let expr = target["expr"].as_str().unwrap_or_default();
                    let r = query(rampart, "127.0.0.1", expr).await;
                    if r.status != 200 || series(&r) == 0 {
                        return false;
                    }
                }
            }
            true
        }
    })
    .await;
    if !ready {
        for panel in panels {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().unwrap_or_default();
                let r = query(&rampart, "127.0.0.1", expr).await;
                if series(&r) == 0 {
                    empty.push(format!(
                        "{}: {expr} -> {}",
                        panel["title"],
                        String::from_utf8_lossy(&r.body)
                    ));
                }
            }
        }
    }
    assert!(ready, "panels without data:\n{}", empty.join("\n"));
    drop(vm);
}
