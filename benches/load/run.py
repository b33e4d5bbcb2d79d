#!/usr/bin/env python3
"""Side-by-side load benchmark: rampart against nginx and nginx + ModSecurity + CRS.

Everything runs on loopback in one run, alternating, so that the machine's noise falls on every
contender alike. The proxy under test is pinned to one core; the load generator (wrk) and the
upstream (nginx `return 200`) share the other.

Contenders:
  direct        wrk straight to the upstream (no proxy)
  nginx         nginx as a plain reverse proxy (keep-alive upstream)
  pingora       the least proxy Pingora makes (benches/examples/bare_pingora.rs): what of a
                connection's or a stream's cost is Pingora's
  bare          rampart with no plugin (its Pingora adapter, routing, access log, deadlines)
  full          rampart with the whole default pipeline (IP reputation, origin verify, rate
                limit, known bad inputs and OWASP at paranoia 1, bot control, admin secret, JWT)
  modsecurity   nginx + ModSecurity 3 + OWASP CRS 3.3.4 at paranoia 1 (Debian packages)

Requests: a GET with a token, a 4 KB form POST, a 16 KB chat-completion POST, a 1 MB one of
prose, and coding agents' requests (tool definitions, tool results holding source files) of
256 KiB and 1 MiB in the OpenAI shape and 1 MiB in Anthropic's, all through the WAF's `llm`
profile in `full`, every byte judged; the upstream reads each chat's body whole before it
answers. Streams: 1,000 slow server-sent event answers at once (memory per stream, CPU per
event, stalls).

Reports, in BENCH_OUT (default target/bench/report.md, with the raw figures in report.json):
throughput and wrk's p50/p99 at saturation, CPU microseconds per request of the proxy process,
each as a ratio to `bare`; added p50/p99 over direct at a fixed rate of half of `full`'s
saturation (open loop, latency from when each request was due, medians of several runs); instructions per request under
valgrind; and memory (RSS idle, with 10,000 idle keep-alive connections, with a million client
addresses in the rate limiter).

Settings (environment): BENCH_SECONDS (5), BENCH_ROUNDS (3), BENCH_LATENCY_ROUNDS (5),
BENCH_STREAMS (1000), BENCH_REQUESTS (comma list of the requests to run, all by default; the
GET runs with the memory section, which sends it),
BENCH_SKIP (comma list of sections to skip: valgrind, memory, addresses (the million client
addresses, part of memory), latency, streams, protocols), BENCH_H2_REQUESTS (20000: requests
per h2load run in the protocols section).
"""
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
WORK = TARGET / "bench"
RAMPART = TARGET / "release" / "rampart"
EXAMPLES = TARGET / "release" / "examples"
SECONDS = float(os.environ.get("BENCH_SECONDS", "5"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
# A single run's p99 swings with whatever else the machine does (for `direct` too); the
# median over several alternating runs is what the budget is read against.
LATENCY_ROUNDS = int(os.environ.get("BENCH_LATENCY_ROUNDS", "5"))
SKIP = set(filter(None, os.environ.get("BENCH_SKIP", "").split(",")))
# (contender, request) pairs a contender does not serve, found by the first check.
UNSERVED = set()
ORIGIN = "bench-origin-3f9a1c7e5b2d4a6f8e0c1b3d5f7a9c2e"
ADMIN = "bench-admin-8b6d4f2a0c9e7b5d3f1a8c6e4b2d0f9a"
ISSUER = "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_Bench"
LOAD_CORE, PROXY_CORE = "0", "1"
CLK_TCK = os.sysconf("SC_CLK_TCK")

PORTS = {"upstream": 18080, "nginx": 18081, "modsecurity": 18082, "bare": 18083, "full": 18084,
         "pingora": 18090, "nginx_tls": 18085, "full_tls": 18086}
H2_REQUESTS = int(os.environ.get("BENCH_H2_REQUESTS", "20000"))
# The streaming upstream (server-sent events), behind every proxy at /sse/.
SSE_PORT = 18089
SSE_STREAMS = int(os.environ.get("BENCH_STREAMS", "1000"))
SSE_EVENTS = 100  # one every 100 ms: a ten-second answer
SSE_INTERVAL = 0.1
ADMIN_PORTS = {"bare": 18093, "full": 18094, "full_tls": 18096}
JWKS_PORT = 18099


def log(*args):
    print(*args, file=sys.stderr, flush=True)


# --- the contenders -----------------------------------------------------------------------

def nginx_conf(name, body):
    d = WORK / name
    d.mkdir(parents=True, exist_ok=True)
    temp = "\n".join(f"  {t}_temp_path {d}/{t};" for t in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf = f"""
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log crit;
worker_rlimit_nofile 65536;
events {{ worker_connections 20000; }}
http {{
  access_log off;
{temp}
  client_body_buffer_size 64k;
  client_max_body_size 16m;
  keepalive_requests 1000000;
{body}
}}
"""
    path = d / "nginx.conf"
    path.write_text(conf)
    return path


def proxy_block(port, extra="", listen=""):
    return f"""
  upstream app {{ server 127.0.0.1:{PORTS['upstream']}; keepalive 64; }}
  upstream sse {{ server 127.0.0.1:{SSE_PORT}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port}{listen};
{extra}
    location / {{
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
    location /sse/ {{
      proxy_pass http://sse;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}"""


def modsecurity_rules():
    path = WORK / "modsecurity" / "main.conf"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "Include /etc/nginx/modsecurity.conf\n"
        "SecRuleEngine On\nSecAuditEngine Off\n"
        # The package's owasp-crs.load uses IncludeOptional, which libmodsecurity 3 lacks.
        "Include /etc/modsecurity/crs/crs-setup.conf\n"
        "Include /usr/share/modsecurity-crs/rules/*.conf\n"
    )
    return path


MODSECURITY = Path("/usr/lib/nginx/modules/ngx_http_modsecurity_module.so")


def modsecurity_argv(name):
    """nginx with ModSecurity 3 and the CRS in blocking mode (anomaly scoring, paranoia 1)."""
    conf = nginx_conf(name, proxy_block(
        PORTS["modsecurity"], f"    modsecurity on;\n    modsecurity_rules_file {modsecurity_rules()};"))
    conf.write_text(f"load_module {MODSECURITY};\n" + conf.read_text())
    return ["nginx", "-c", str(conf), "-p", str(WORK / name)]


def rampart_rules(name, full, per_ip_limit=4_000_000_000, tls=None):
    d = WORK / f"rules-{name}"
    if d.exists():
        shutil.rmtree(d)
    shutil.copytree(ROOT / "rules", d)
    plugins = ""
    if full:
        plugins = f"""
[[listeners.plugins]]
type = "ip_reputation"
allow = ["10.20.0.0/16"]
lists = [
  {{ name = "AWSManagedIPReputationList", files = ["ip/reputation.txt"] }},
  {{ name = "AWSManagedReconnaissanceList", files = ["ip/reconnaissance.txt"], action = "count" }},
  {{ name = "AWSManagedIPDDoSList", files = ["ip/ddos.txt"] }},
]

[[listeners.plugins]]
type = "origin_verify"
accept = ["header", "internal"]
secret = "origin-verify"

[[listeners.plugins]]
type = "jwt"
issuers = [{{ issuer = "{ISSUER}", jwks_url = "http://127.0.0.1:{JWKS_PORT}/jwks.json" }}]

[[listeners.plugins]]
type = "rate_limit"
exempt_internal = true
limits = [{{ name = "RateLimitPerIP", requests = {per_ip_limit}, window_seconds = 300, max_keys = 2000000 }}]

[[listeners.plugins]]
type = "bad_inputs"
routes = {{ litellm = "llm", sse = "llm" }}

[[listeners.plugins]]
type = "owasp"
paranoia = 1
threshold = 5
routes = {{ litellm = "llm", sse = "llm" }}

[[listeners.plugins]]
type = "bot_control"
datacenter_networks = ["bots/datacenters.txt"]
exempt_authenticated = true

[[listeners.plugins]]
type = "admin_secret"
secret = "admin-header"
paths = ["/key/", "/user/", "/model/", "/spend/"]
"""
    (d / "gateway.toml").write_text(f"""
[network]
internal_cidrs = ["10.20.0.0/16"]
trusted_proxies = ["127.0.0.1/32"]

[secrets.origin-verify]
env = ["RAMPART_ORIGIN_VERIFY_SECRET"]
[secrets.admin-header]
env = ["RAMPART_ADMIN_HEADER_SECRET"]

[upstreams.app]
addrs = ["127.0.0.1:{PORTS['upstream']}"]

[upstreams.sse]
addrs = ["127.0.0.1:{SSE_PORT}"]

[[listeners]]
name = "web"
listen = "127.0.0.1:{PORTS[name]}"
{f'tls = {{ cert = "{tls[0]}", key = "{tls[1]}" }}' if tls else ""}
# The memory section holds 10,000 connections: past the default cap of 8,192.
client_limits = {{ max_connections = 20000 }}
{plugins}
[[listeners.routes]]
prefix = "/v1/"
name = "litellm"
upstream = "app"

[[listeners.routes]]
prefix = "/sse/"
name = "sse"
upstream = "sse"

[[listeners.routes]]
prefix = "/"
upstream = "app"
""")
    return d


class Proc:
    """A server process, pinned to a core; CPU time summed over it and its children."""

    def __init__(self, name, argv, core, env=None):
        self.name = name
        out = open(WORK / f"{name}.log", "wb")
        self.p = subprocess.Popen(["taskset", "-c", core] + argv, stdout=out, stderr=subprocess.STDOUT,
                                  env={**os.environ, **(env or {})}, preexec_fn=raise_nofile)

    def pids(self):
        pids = [self.p.pid]
        try:
            kids = subprocess.run(["pgrep", "-P", str(self.p.pid)], capture_output=True, text=True).stdout
            pids += [int(k) for k in kids.split()]
        except OSError:
            pass
        return pids

    def cpu_seconds(self):
        total = 0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
            except (OSError, IndexError, ValueError):
                pass
        return total / CLK_TCK

    def schedstat_ms(self):
        """Summed over its threads, in ms: time on the core and time waited, runnable, for it
        (schedstat's first two fields)."""
        on_cpu = waited = 0
        for pid in self.pids():
            for task in Path(f"/proc/{pid}/task").glob("*"):
                try:
                    fields = (task / "schedstat").read_text().split()
                    on_cpu, waited = on_cpu + int(fields[0]), waited + int(fields[1])
                except (OSError, IndexError, ValueError):
                    pass
        return on_cpu / 1e6, waited / 1e6

    def rss_kib(self):
        total = 0
        for pid in self.pids():
            try:
                m = re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())
                total += int(m.group(1)) if m else 0
            except OSError:
                pass
        return total

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


def raise_nofile():
    """As many open files as the hard limit allows (10,000 connections need more than 1024)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def wait_port(port, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}; see {WORK}/*.log")


def start_jwks(jwks):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = jwks.encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", JWKS_PORT), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def rampart(name, full, argv_extra=(), per_ip_limit=4_000_000_000, tls=None):
    """A rampart contender. Its per-IP limit is out of reach (a saturation run is one client)
    unless `per_ip_limit` says otherwise."""
    rules = rampart_rules(name, full, per_ip_limit, tls)
    env = {"RAMPART_ORIGIN_VERIFY_SECRET": ORIGIN, "RAMPART_ADMIN_HEADER_SECRET": ADMIN, "RUST_LOG": "warn"}
    argv = [str(RAMPART), "--rules", str(rules), "--threads", "1", "--no-watch",
            "--admin", f"127.0.0.1:{ADMIN_PORTS[name]}", *argv_extra]
    return argv, env


# --- the requests -------------------------------------------------------------------------

PROSE = ("The gateway sits in front of the platform and every request passes its checks before "
         "it reaches a model. Operators reload rules while traffic flows, and the metrics show "
         "what was refused and why. ")


def requests(token):
    head = (f"Host: bench.rampart.test\r\nUser-Agent: OpenAI/Python 1.54.0\r\n"
            f"Authorization: Bearer {token}\r\nX-Origin-Verify: {ORIGIN}\r\nAccept: application/json\r\n")
    form = "name=Ada+Lovelace&email=ada%40example.com&comment=" + (PROSE * 40).replace(" ", "+")
    form = form[:4096]
    chat = json.dumps({"model": "gpt-4o-mini", "stream": False, "messages": [
        {"role": "system", "content": "You are a helpful assistant for the platform's operators."},
        {"role": "user", "content": (PROSE * 200)[:16000]},
    ]})
    # A coding agent's request: a megabyte of prompt, judged whole (every window of it).
    chat_1m = json.dumps({"model": "gpt-4o-mini", "stream": False, "messages": [
        {"role": "system", "content": "You are a coding agent. Read the files and fix the bug."},
        {"role": "user", "content": (PROSE * 6000)[:1_000_000]},
    ]})
    # Coding agents' requests: tool definitions, and tool results holding source files
    # (benches/src/agent.rs), in the OpenAI shape and, for Claude's clients, Anthropic's.
    agent = {}
    for name, shape, size in (("agent_256k", "openai", 256 * 1024), ("agent_1m", "openai", 1024 * 1024),
                              ("agent_1m_anthropic", "anthropic", 1024 * 1024)):
        agent[name] = subprocess.run([str(EXAMPLES / "agent_request"), shape, str(size)],
                                     check=True, capture_output=True).stdout.decode()
    out = {
        "get": f"GET /v1/models HTTP/1.1\r\n{head}\r\n",
        "form_4k": f"POST /submit HTTP/1.1\r\n{head}Content-Type: application/x-www-form-urlencoded\r\n"
                   f"Content-Length: {len(form)}\r\n\r\n{form}",
        "chat_16k": f"POST /v1/chat/completions HTTP/1.1\r\n{head}Content-Type: application/json\r\n"
                    f"Content-Length: {len(chat)}\r\n\r\n{chat}",
        "chat_1m": f"POST /v1/chat/completions HTTP/1.1\r\n{head}Content-Type: application/json\r\n"
                   f"Content-Length: {len(chat_1m)}\r\n\r\n{chat_1m}",
    }
    for name, body in agent.items():
        path = "/v1/messages" if name.endswith("anthropic") else "/v1/chat/completions"
        out[name] = (f"POST {path} HTTP/1.1\r\n{head}Content-Type: application/json\r\n"
                     f"Content-Length: {len(body.encode())}\r\n\r\n{body}")
    wanted = set(filter(None, os.environ.get("BENCH_REQUESTS", "").split(",")))
    files = {}
    for name, raw in out.items():
        # The GET runs whenever the memory section does, which sends it.
        if wanted and name not in wanted and not (name == "get" and "memory" not in SKIP):
            continue
        path = WORK / f"{name}.http"
        path.write_text(raw)
        files[name] = path
    return files


LUA = """
local f = assert(io.open(os.getenv("BENCH_REQUEST"), "rb"))
local raw = f:read("*a")
f:close()
request = function() return raw end
"""


def to_us(text):
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    if not m:
        return None
    return float(m.group(1)) * {"us": 1, "ms": 1000, "s": 1e6}[m.group(2)]


def wrk(port, request, seconds, connections=32):
    lua = WORK / "request.lua"
    lua.write_text(LUA)
    out = subprocess.run(
        ["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s", "--latency",
         "-s", str(lua), f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, env={**os.environ, "BENCH_REQUEST": str(request)})
    text = out.stdout
    total = re.search(r"(\d+) requests in", text)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    pct = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", text, re.M))
    if not (total and rps):
        raise SystemExit(f"wrk failed on port {port}:\n{text}\n{out.stderr}")
    return {"requests": int(total.group(1)), "rps": float(rps.group(1)),
            "p50_us": to_us(pct.get("50", "")), "p99_us": to_us(pct.get("99", "")),
            "non_2xx": int(non2xx.group(1)) if non2xx else 0}


def openloop(port, request, rate, seconds, connections=32):
    out = subprocess.run(
        ["taskset", "-c", LOAD_CORE, str(EXAMPLES / "openloop"), f"127.0.0.1:{port}", str(request),
         str(rate), str(seconds), str(connections)],
        capture_output=True, text=True)
    try:
        return json.loads(out.stdout)
    except json.JSONDecodeError:
        raise SystemExit(f"openloop failed on {port}: {out.stdout} {out.stderr}")


# --- sections -----------------------------------------------------------------------------

def saturation(procs, reqs):
    """wrk at saturation, every contender and request, alternating, ROUNDS times."""
    runs = {}
    for r in range(ROUNDS):
        for req_name, req in reqs.items():
            for name in ["direct", *procs]:
                if (name, req_name) in UNSERVED:
                    continue
                port = PORTS["upstream" if name == "direct" else name]
                proc = procs.get(name)
                before = proc.cpu_seconds() if proc else 0
                res = wrk(port, req, SECONDS)
                if proc:
                    res["cpu_us_per_req"] = (proc.cpu_seconds() - before) / max(res["requests"], 1) * 1e6
                runs.setdefault((name, req_name), []).append(res)
                log(f"round {r + 1} {req_name:9} {name:12} {res['rps']:9.0f} rps  "
                    f"p50 {res['p50_us'] or 0:7.0f} us  p99 {res['p99_us'] or 0:7.0f} us  "
                    f"cpu {res.get('cpu_us_per_req', 0):7.1f} us/req  non-2xx {res['non_2xx']}")
    table = {}
    for (name, req_name), rs in runs.items():
        med = lambda k: statistics.median(x[k] for x in rs if x.get(k) is not None) if any(x.get(k) is not None for x in rs) else None
        table.setdefault(req_name, {})[name] = {k: med(k) for k in ("rps", "p50_us", "p99_us", "cpu_us_per_req", "non_2xx")}
    return table


def latency(procs, reqs, table):
    """Open-loop latency at half of `full`'s saturation, contenders alternating, LATENCY_ROUNDS
    times. Beside each run, how long the proxy's threads waited for their core while runnable:
    a tail that is queueing on the core shows there, one inside the process does not."""
    out = {}
    for req_name in ("get", "chat_16k"):
        rate = int(table[req_name]["full"]["rps"] / 2)
        for r in range(LATENCY_ROUNDS):
            for name in ["direct", "nginx", "pingora", "bare", "full"]:
                if (name, req_name) in UNSERVED:
                    continue
                port = PORTS["upstream" if name == "direct" else name]
                proc = procs.get(name)
                before = proc.schedstat_ms() if proc else (0, 0)
                res = openloop(port, reqs[req_name], rate, SECONDS)
                after = proc.schedstat_ms() if proc else (0, 0)
                res["run_delay_ms"] = after[1] - before[1]
                # How much of its core the proxy used: the nearer to all of it, the longer
                # any burst of arrivals queues.
                res["busy_pct"] = 100 * (after[0] - before[0]) / (1000 * SECONDS)
                out.setdefault(req_name, {}).setdefault(name, []).append(res)
                log(f"fixed {rate}/s {req_name:9} {name:8} p50 {res['p50_us']} us  p99 {res['p99_us']} us  "
                    f"errors {res['errors']}  busy {res['busy_pct']:.0f}%  waited for the core {res['run_delay_ms']:.1f} ms  "
                    f"pacer late by up to {res['pacer_late_max_us']} us")
        for name, rs in out[req_name].items():
            out[req_name][name] = {"rate": rate,
                                   **{k: statistics.median(x[k] for x in rs)
                                      for k in ("p50_us", "p99_us", "max_us", "errors", "run_delay_ms", "busy_pct")},
                                   "p99_runs": [x["p99_us"] for x in rs],
                                   # The client's own lateness: it sends what it owes in a burst.
                                   "pacer_late_max_us": max(x["pacer_late_max_us"] for x in rs)}
    return out


def instructions(reqs):
    """Instructions per request under valgrind (callgrind), counted over 300 requests after
    a warm-up, for nginx, bare and full; one request type at a time."""
    if not shutil.which("valgrind"):
        return {}
    out = {}
    targets = {
        "nginx": lambda: (["nginx", "-c", str(nginx_conf("nginx-vg", proxy_block(PORTS["nginx"]))),
                           "-p", str(WORK / "nginx-vg"), "-g", "master_process off;"], {}),
        "bare": lambda: rampart("bare", False),
        "full": lambda: rampart("full", True),
    }
    if MODSECURITY.exists():
        targets["modsecurity"] = lambda: (modsecurity_argv("modsec-vg") + ["-g", "master_process off;"], {})
    for name, make in targets.items():
        argv, env = make()
        cg = WORK / f"callgrind.{name}.out"
        proc = Proc(f"vg-{name}", ["valgrind", "--tool=callgrind", f"--callgrind-out-file={cg}",
                                   "--dump-instr=no", *argv], PROXY_CORE, env)
        wait_port(PORTS[name], 120)
        for req_name, req in reqs.items():
            try:
                openloop(PORTS[name], req, 20, 3, 1)  # warm-up: caches, connections, JIT-free paths
            except SystemExit as e:
                # ModSecurity's CRS refuses bodies past its 128 KB limit: as in the saturation runs.
                log(f"valgrind {name:12} {req_name}: not served, left out ({str(e).strip()[:80]})")
                continue
            subprocess.run(["callgrind_control", "-z", str(proc.p.pid)], capture_output=True)
            res = openloop(PORTS[name], req, 60, 5, 1)
            dump = subprocess.run(["callgrind_control", "-d", str(proc.p.pid)], capture_output=True, text=True)
            total = 0
            for f in WORK.glob(f"callgrind.{name}.out*"):
                m = re.search(r"^(?:summary|totals):\s+(\d+)", f.read_text(errors="replace"), re.M)
                if m and f.name != cg.name:
                    total = max(total, int(m.group(1)))
                    f.unlink()
            out.setdefault(req_name, {})[name] = total / max(res["ok"] + res["errors"], 1)
            log(f"valgrind {name:12} {req_name:9} {out[req_name][name]:12.0f} instructions/request ({dump.returncode})")
        proc.stop()
        for f in WORK.glob(f"callgrind.{name}.out*"):
            f.unlink()
    return out


def memory(reqs):
    out = {}
    # Idle, on the shipped rules with their listeners on loopback.
    env = {"RAMPART_ORIGIN_VERIFY_SECRET": ORIGIN, "RAMPART_ADMIN_HEADER_SECRET": ADMIN, "RUST_LOG": "warn"}
    argv = [str(RAMPART), "--rules", str(ROOT / "rules"), "--no-watch", "--admin", "127.0.0.1:18095",
            "--listen", "web=127.0.0.1:18085", "--listen", "langfuse=127.0.0.1:18086",
            "--listen", "victoriametrics=127.0.0.1:18087"]
    p = Proc("shipped", argv, PROXY_CORE, env)
    wait_port(18085)
    time.sleep(1)
    out["idle_shipped_rules_mib"] = p.rss_kib() / 1024
    p.stop()

    argv, env = rampart("full", True)
    p = Proc("full-memory", argv, PROXY_CORE, env)
    wait_port(PORTS["full"])
    time.sleep(1)
    out["idle_full_pipeline_mib"] = p.rss_kib() / 1024
    # 10,000 keep-alive connections, each after one request, then idle.
    conns, ok = hold_connections(PORTS["full"], reqs["get"].read_bytes(), 10_000)
    time.sleep(1)
    out["connections_10k_mib"] = p.rss_kib() / 1024
    out["connections_10k_answered"] = ok
    for s in conns:
        s.close()
    # Given back once they closed (the allocator returns freed pages within seconds).
    time.sleep(12)
    out["connections_10k_closed_mib"] = p.rss_kib() / 1024
    p.stop()
    if "addresses" in SKIP:
        return out
    # A million client addresses (X-Forwarded-For from a trusted peer) in the rate limiter, in
    # a fresh process: memory freed by the connections above would hide the limiter's growth.
    # The limit is the shipped one (1,000 per 5 minutes): each address sends one request, and
    # the counters are as wide as that limit needs.
    argv, env = rampart("full", True, per_ip_limit=1000)
    p = Proc("full-memory", argv, PROXY_CORE, env)
    wait_port(PORTS["full"])
    time.sleep(1)
    lua = WORK / "xff.lua"
    lua.write_text(LUA + """
-- Each wrk run goes on from where the last one stopped, so that every address is new.
local n = tonumber(os.getenv("XFF_START") or "0")
request = function()
  n = n + 1
  local xff = string.format("100.%d.%d.%d", 64 + math.floor(n / 65536) % 64, math.floor(n / 256) % 256, n % 256)
  return raw:gsub("\\r\\n\\r\\n", "\\r\\nX-Forwarded-For: " .. xff .. "\\r\\n\\r\\n", 1)
end
""")
    before = p.rss_kib()
    sent = 0
    while sent < 1_000_000:
        res = subprocess.run(["taskset", "-c", LOAD_CORE, "wrk", "-t1", "-c16", "-d20s", "-s", str(lua),
                              f"http://127.0.0.1:{PORTS['full']}/"], capture_output=True, text=True,
                             env={**os.environ, "BENCH_REQUEST": str(reqs["get"]), "XFF_START": str(sent)})
        m = re.search(r"(\d+) requests in", res.stdout)
        sent += int(m.group(1)) if m else 1_000_000
        log(f"memory: {sent} distinct addresses sent")
    out["million_addresses_mib"] = p.rss_kib() / 1024
    out["million_addresses_added_mib"] = (p.rss_kib() - before) / 1024
    # What the limiter holds, once the allocator has handed back what the million requests
    # freed (jemalloc's decay is 10 s): the figure the goal is about.
    out["million_addresses_added_settled_mib"] = (settled_rss_kib(p) - before) / 1024
    p.stop()
    return out


def hold_connections(port, raw, count):
    """`count` keep-alive connections to `port`, each after one request `raw`; and how many
    were answered 200."""
    conns = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(raw)
        conns.append(s)
    ok = 0
    for s in conns:
        s.settimeout(10)
        try:
            ok += s.recv(65536).startswith(b"HTTP/1.1 200")
        except OSError:
            pass
    return conns, ok


def settled_rss_kib(proc, most=20.0):
    """RSS once it stops falling (an allocator hands freed pages back over seconds: jemalloc's
    decay is 10 s), polled each second for at most `most` seconds."""
    last = proc.rss_kib()
    waited = 0.0
    while waited < most:
        time.sleep(1)
        waited += 1
        now = proc.rss_kib()
        if now > last * 0.995:
            return now
        last = now
    return last


def idle_connections(procs, reqs, count=10_000):
    """KiB each idle keep-alive connection holds in each proxy, after one request: one second
    after the last answer (what the burst of 10,000 requests left too), and once RSS settled
    (what the idle connections themselves hold)."""
    out = {}
    raw = reqs["get"].read_bytes()
    for name in ("nginx", "pingora", "bare", "full"):
        proc = procs[name]
        time.sleep(2)
        before = settled_rss_kib(proc)
        conns, ok = hold_connections(PORTS[name], raw, count)
        time.sleep(1)
        soon = proc.rss_kib()
        settled = settled_rss_kib(proc)
        out[name] = {"answered": ok, "kib_per_connection": (soon - before) / count,
                     "kib_per_connection_settled": (settled - before) / count}
        for s in conns:
            s.close()
        log(f"idle connections {name:6} {out[name]}")
    return out


def streams(procs, token):
    """SSE_STREAMS slow streams at once through each proxy: memory per open stream, CPU per
    event relayed, and the longest stall any stream saw."""
    head = (f"Host: bench.rampart.test\r\nUser-Agent: OpenAI/Python 1.54.0\r\n"
            f"Authorization: Bearer {token}\r\nX-Origin-Verify: {ORIGIN}\r\nAccept: text/event-stream\r\n")
    body = json.dumps({"model": "gpt-4o-mini", "stream": True,
                       "messages": [{"role": "user", "content": "Count to a hundred, slowly."}]})
    request = WORK / "sse.http"
    request.write_text(f"POST /sse/v1/chat/completions HTTP/1.1\r\n{head}Content-Type: application/json\r\n"
                       f"Content-Length: {len(body)}\r\n\r\n{body}")
    out = {}
    for name in ("nginx", "pingora", "bare", "full"):
        proc = procs[name]
        time.sleep(2)
        rss_before, cpu_before = proc.rss_kib(), proc.cpu_seconds()
        client = subprocess.Popen(["taskset", "-c", LOAD_CORE, sys.executable, str(ROOT / "benches/load/sse.py"),
                                   "stream", str(PORTS[name]), str(SSE_STREAMS), str(request)],
                                  stdout=subprocess.PIPE, text=True)
        # Half way through the answers every stream is open.
        time.sleep(SSE_EVENTS * SSE_INTERVAL / 2)
        rss_open = proc.rss_kib()
        stdout, _ = client.communicate(timeout=SSE_EVENTS * SSE_INTERVAL * 6 + 60)
        cpu = proc.cpu_seconds() - cpu_before
        res = json.loads(stdout)
        res["kib_per_stream"] = (rss_open - rss_before) / SSE_STREAMS
        res["cpu_us_per_event"] = cpu / max(res["events"], 1) * 1e6
        out[name] = res
        log(f"streams {name:6} {res}")
    return out


# --- the report ---------------------------------------------------------------------------

def h2load(port, token, mode):
    """`h2load` over TLS: GET /v1/models with the token, H2_REQUESTS in all."""
    flags = {"http/1.1": ["--h1", "-c", "32"], "h2": ["-c", "32", "-m", "1"],
             "h2 x8 streams": ["-c", "4", "-m", "8"]}[mode]
    argv = ["taskset", "-c", LOAD_CORE, "h2load", "-n", str(H2_REQUESTS), *flags,
            "-H", ":authority: bench.rampart.test", "-H", "user-agent: OpenAI/Python 1.54.0",
            "-H", f"authorization: Bearer {token}", "-H", f"x-origin-verify: {ORIGIN}",
            "-H", "accept: application/json", f"https://127.0.0.1:{port}/v1/models"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600).stdout
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    rps = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    ok = re.search(r"status codes: (\d+) 2xx", out)
    if not (done and rps and ok):
        raise SystemExit(f"h2load failed on port {port} ({mode}):\n{out}")
    return {"requests": int(done.group(1)), "rps": float(rps.group(1)), "ok": int(ok.group(1))}


def protocols(token):
    """HTTP/2 against HTTP/1.1, both over TLS, through nginx (http2 on) and rampart's full
    pipeline: CPU per request of the proxy, alternating, ROUNDS times."""
    cert, key = WORK / "tls-cert.pem", WORK / "tls-key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
                    "-subj", "/CN=bench.rampart.test"], check=True, capture_output=True)
    procs = {}
    try:
        tls_block = proxy_block(PORTS["nginx_tls"], f"    ssl_certificate {cert};\n    ssl_certificate_key {key};",
                                " ssl http2")
        procs["nginx_tls"] = Proc("nginx_tls", ["nginx", "-c", str(nginx_conf("nginx_tls", tls_block)),
                                                "-p", str(WORK / "nginx_tls")], PROXY_CORE)
        argv, env = rampart("full_tls", True, tls=(cert, key))
        procs["full_tls"] = Proc("full_tls", argv, PROXY_CORE, env)
        for name in procs:
            wait_port(PORTS[name])
        time.sleep(1)
        runs = {}
        for r in range(ROUNDS):
            for mode in ("http/1.1", "h2", "h2 x8 streams"):
                for name, proc in procs.items():
                    before = proc.cpu_seconds()
                    res = h2load(PORTS[name], token, mode)
                    res["cpu_us_per_req"] = (proc.cpu_seconds() - before) / max(res["requests"], 1) * 1e6
                    runs.setdefault((name, mode), []).append(res)
                    log(f"round {r + 1} {mode:14} {name:10} {res['rps']:9.0f} rps  "
                        f"cpu {res['cpu_us_per_req']:7.1f} us/req  2xx {res['ok']}/{res['requests']}")
        return {f"{name} {mode}": {k: statistics.median(x[k] for x in rs) for k in ("rps", "cpu_us_per_req", "ok", "requests")}
                for (name, mode), rs in runs.items()}
    finally:
        for p in procs.values():
            p.stop()


def ratio(a, b):
    return f"{a / b:.2f}x" if a and b else "-"


def report(machine, sat, lat, idle, sse, ins, mem, proto=None):
    lines = [f"# Load benchmark ({time.strftime('%Y-%m-%d %H:%M')})", "", machine, "",
             f"wrk -t1 -c32, {SECONDS:g} s per run, {ROUNDS} rounds alternating; medians.", ""]
    for req_name, row in sat.items():
        lines += [f"## {req_name}", "",
                  "| contender | rps | p50 µs | p99 µs | CPU µs/req | CPU vs bare | non-2xx |",
                  "|---|---|---|---|---|---|---|"]
        bare = row.get("bare", {}).get("cpu_us_per_req")
        for name, r in row.items():
            cpu = r.get("cpu_us_per_req")
            lines.append(f"| {name} | {r['rps']:.0f} | {r['p50_us'] or 0:.0f} | {r['p99_us'] or 0:.0f} | "
                         f"{cpu:.1f} | {ratio(cpu, bare)} | {r['non_2xx']:.0f} |" if cpu else
                         f"| {name} | {r['rps']:.0f} | {r['p50_us'] or 0:.0f} | {r['p99_us'] or 0:.0f} | - | - | {r['non_2xx']:.0f} |")
        full, modsec = row.get("full", {}).get("cpu_us_per_req"), row.get("modsecurity", {}).get("cpu_us_per_req")
        if full and modsec:
            lines.append(f"\nModSecurity + CRS uses {modsec / full:.1f}x the CPU per request of rampart's full pipeline.")
        lines.append("")
    if lat:
        lines += ["## Latency at half of full's saturation (open loop)", "",
                  f"Medians over {LATENCY_ROUNDS} alternating runs, and each run's p99. Core busy: the share of "
                  "its core the proxy used. Pacer late: how far the client's pacer fell behind at worst "
                  "(it then sends what it owes at once, a burst).", "",
                  "| request | rate/s | contender | p50 µs | p99 µs | added p50 | added p99 | errors | core busy | waited for the core, ms a run | p99 of each run | pacer late, max µs |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for req_name, row in lat.items():
            d = row["direct"]
            for name, r in row.items():
                runs = ", ".join(str(v) for v in r.get("p99_runs", []))
                # `direct` has no proxy process whose waiting could be read.
                waited, busy = ("-", "-") if name == "direct" else (f"{r['run_delay_ms']:.1f}", f"{r['busy_pct']:.0f}%")
                lines.append(f"| {req_name} | {r['rate']} | {name} | {r['p50_us']:.0f} | {r['p99_us']:.0f} | "
                             f"{r['p50_us'] - d['p50_us']:.0f} | {r['p99_us'] - d['p99_us']:.0f} | {r['errors']:.0f} | "
                             f"{busy} | {waited} | {runs} | {r['pacer_late_max_us']} |")
        lines.append("")
    if idle:
        lines += ["## Idle keep-alive connections (10,000, after one GET each)", "",
                  "KiB of RSS per connection one second after the last answer (freed memory of the "
                  "burst an allocator has not handed back yet included), and once RSS settled "
                  "(what the idle connections hold).", "",
                  "| contender | answered | KiB per connection, 1 s | settled | settled vs nginx |",
                  "|---|---|---|---|---|"]
        for name, r in idle.items():
            settled = r["kib_per_connection_settled"]
            lines.append(f"| {name} | {r['answered']} | {r['kib_per_connection']:.1f} | {settled:.1f} | "
                         f"{ratio(settled, idle['nginx']['kib_per_connection_settled'])} |")
        lines.append("")
    if sse:
        lines += [f"## {SSE_STREAMS} server-sent event streams at once ({SSE_EVENTS} events each, "
                  f"one every {SSE_INTERVAL * 1000:.0f} ms)", "",
                  "| contender | completed | events | KiB per open stream | vs nginx | CPU µs per event | vs nginx | longest stall ms |",
                  "|---|---|---|---|---|---|---|---|"]
        ng = sse.get("nginx", {})
        for name, r in sse.items():
            lines.append(f"| {name} | {r['completed']} | {r['events']} | {r['kib_per_stream']:.1f} | "
                         f"{ratio(r['kib_per_stream'], ng.get('kib_per_stream'))} | {r['cpu_us_per_event']:.1f} | "
                         f"{ratio(r['cpu_us_per_event'], ng.get('cpu_us_per_event'))} | {r['max_gap_ms']:.0f} |")
        lines.append("")
    if proto:
        lines += ["## HTTP/2 against HTTP/1.1 (TLS, GET with a token)", "",
                  f"h2load, {H2_REQUESTS} requests a run: HTTP/1.1 on 32 connections, HTTP/2 on 32 "
                  f"connections of one stream each, and on 4 connections of 8 streams (as a browser "
                  f"multiplexes); {ROUNDS} rounds alternating, medians.", "",
                  "| contender | protocol | rps | CPU µs/req | vs its HTTP/1.1 | 2xx |", "|---|---|---|---|---|---|"]
        for key, r in proto.items():
            name, mode = key.split(" ", 1)
            h1 = proto.get(f"{name} http/1.1", {}).get("cpu_us_per_req")
            lines.append(f"| {name} | {mode} | {r['rps']:.0f} | {r['cpu_us_per_req']:.1f} | "
                         f"{ratio(r['cpu_us_per_req'], h1)} | {r['ok']:.0f}/{r['requests']:.0f} |")
        lines.append("")
    if ins:
        lines += ["## Instructions per request (valgrind --tool=callgrind, whole process)", "",
                  "| request | " + " | ".join(next(iter(ins.values())).keys()) + " |",
                  "|---|" + "---|" * len(next(iter(ins.values())))]
        for req_name, row in ins.items():
            lines.append(f"| {req_name} | " + " | ".join(f"{v / 1000:.0f} k" for v in row.values()) + " |")
        lines.append("")
    if mem:
        lines += ["## Memory (RSS)", ""] + [f"- {k}: {v:.1f}" if isinstance(v, float) else f"- {k}: {v}" for k, v in mem.items()] + [""]
    return "\n".join(lines)


def main():
    if not RAMPART.exists() or not all((EXAMPLES / e).exists() for e in ("openloop", "agent_request", "bare_pingora")):
        raise SystemExit("build first: cargo build --release -p rampart --bin rampart && "
                         "cargo build --release -p rampart-benches --examples")
    WORK.mkdir(parents=True, exist_ok=True)
    # A port held by another process would be measured in place of a contender.
    wanted = {**PORTS, **{f"{k} admin": v for k, v in ADMIN_PORTS.items()}, "jwks": JWKS_PORT,
              "sse upstream": SSE_PORT}
    for name, port in wanted.items():
        with socket.socket() as probe:
            # As the servers bind: a port with only closed connections in TIME_WAIT is free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                raise SystemExit(f"port {port} ({name}) is taken by another process: stop it first")
    raise_nofile()
    subprocess.run([str(EXAMPLES / "bench_identity"), str(WORK), ISSUER], check=True)
    token = (WORK / "token.txt").read_text().strip()
    jwks_server = start_jwks((WORK / "jwks.json").read_text())
    reqs = requests(token)
    machine = (f"Machine: {os.cpu_count()} cores ({platform_cpu()}), Linux {os.uname().release}; "
               f"proxy pinned to core {PROXY_CORE}, wrk and the upstream to core {LOAD_CORE}; "
               f"rampart --threads 1, nginx worker_processes 1.")
    procs = {}
    up = sse_up = None
    try:
        up = Proc("upstream", ["nginx", "-c", str(nginx_conf("upstream", f"""
  server {{ listen 127.0.0.1:{PORTS['upstream']}; client_max_body_size 16m;
    location / {{ return 200 "ok\\n"; }}
    # A chat is read whole before the answer, as LiteLLM does (`return` alone answers first
    # and the proxy in front may stop sending the body): nginx buffers it, then asks itself,
    # over kept-alive connections: a new one per chat ran the loopback out of ports (TIME_WAIT)
    # and the upstream reset connections in the middle of a run.
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    location /v1/chat/completions {{ proxy_pass http://self/read; }}
    location /v1/messages {{ proxy_pass http://self/read; }}
    location = /read {{ return 200 "ok\\n"; }} }}
  upstream self {{ server 127.0.0.1:{PORTS['upstream']}; keepalive 16; }}""")),
                               "-p", str(WORK / "upstream")], LOAD_CORE)
        wait_port(PORTS["upstream"])
        sse_up = Proc("sse-upstream", [sys.executable, str(ROOT / "benches/load/sse.py"), "serve",
                                       str(SSE_PORT), str(SSE_EVENTS), str(SSE_INTERVAL)], LOAD_CORE)
        wait_port(SSE_PORT)
        procs["nginx"] = Proc("nginx", ["nginx", "-c", str(nginx_conf("nginx", proxy_block(PORTS["nginx"]))),
                                        "-p", str(WORK / "nginx")], PROXY_CORE)
        procs["pingora"] = Proc("pingora", [str(EXAMPLES / "bare_pingora"), f"127.0.0.1:{PORTS['pingora']}",
                                            f"127.0.0.1:{PORTS['upstream']}", f"127.0.0.1:{SSE_PORT}"], PROXY_CORE)
        for name, full in (("bare", False), ("full", True)):
            argv, env = rampart(name, full)
            procs[name] = Proc(name, argv, PROXY_CORE, env)
        if MODSECURITY.exists():
            procs["modsecurity"] = Proc("modsecurity", modsecurity_argv("modsecurity"), PROXY_CORE)
        for name in procs:
            wait_port(PORTS[name])
        time.sleep(1)
        for req_name, req in reqs.items():  # every contender answers every request
            for name in procs:
                try:
                    r = openloop(PORTS[name], req, 10, 0.5, 1)
                except SystemExit as e:
                    # ModSecurity's CRS refuses a body past its 128 KB limit and closes.
                    log(f"check {name:12} {req_name:9} not served ({e}): left out of this request")
                    UNSERVED.add((name, req_name))
                    continue
                log(f"check {name:12} {req_name:9} ok {r['ok']} errors {r['errors']}")
        sat = saturation(procs, reqs)
        lat = {} if "latency" in SKIP else latency(procs, reqs, sat)
        sse = {} if "streams" in SKIP else streams(procs, token)
        idle = {} if "memory" in SKIP else idle_connections(procs, reqs)
        for name in ("pingora", "bare", "full", "nginx", "modsecurity"):
            if name in procs:
                procs.pop(name).stop()
        proto = {} if "protocols" in SKIP else protocols(token)
        ins = {} if "valgrind" in SKIP else instructions(reqs)
        mem = {} if "memory" in SKIP else memory(reqs)
        up.stop()
        sse_up.stop()
    finally:
        for p in procs.values():
            p.stop()
        for server in (up, sse_up):
            if server is not None:
                server.stop()
        jwks_server.shutdown()
    out = Path(os.environ.get("BENCH_OUT", WORK / "report.md"))
    text = report(machine, sat, lat, idle, sse, ins, mem, proto)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps({"saturation": sat, "latency": lat, "idle_connections": idle, "streams": sse, "instructions": ins, "memory": mem, "protocols": proto}, indent=1))
    print(text)


def platform_cpu():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    main()
