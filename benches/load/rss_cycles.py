#!/usr/bin/env python3
"""Memory given back after load: RSS of a release rampart across cycles of load that ends.

Each cycle opens N keep-alive connections (one GET each, then idle) and closes them, then
holds M unfinished request heads of 60 KB each (the slowloris shape) until rampart closes
them at the head deadline; RSS is read after each step. A leak grows with every cycle; an
allocator that keeps what was freed grows once and stays.

Usage: benches/load/rss_cycles.py [--cycles 3] [--connections 2000] [--heads 200]
Needs target/release/rampart; prints one line per step and a JSON summary.
"""
import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RAMPART = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release" / "rampart"


class Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid):
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", text).group(1)) / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cycles", type=int, default=3)
    ap.add_argument("--connections", type=int, default=2000)
    ap.add_argument("--heads", type=int, default=200)
    ap.add_argument("--header-timeout-ms", type=int, default=3000)
    ap.add_argument("--trim", action="store_true",
                    help="at the end, call glibc's malloc_trim(0) in the process (gdb) and read RSS again: "
                         "what it gives back was free memory the allocator kept, not a leak")
    args = ap.parse_args()

    import resource
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    up_port, port, admin = free_port(), free_port(), free_port()
    ThreadingHTTPServer.request_queue_size = 4096
    ThreadingHTTPServer.daemon_threads = True
    server = ThreadingHTTPServer(("127.0.0.1", up_port), Upstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    rules = Path(tempfile.mkdtemp())
    (rules / "gateway.toml").write_text(f"""
[upstreams.app]
addrs = ["127.0.0.1:{up_port}"]
[[listeners]]
name = "web"
listen = "127.0.0.1:{port}"
client_limits = {{ header_timeout_ms = {args.header_timeout_ms}, max_connections_per_address = 100000, max_connections = 100000 }}
[[listeners.routes]]
prefix = "/"
upstream = "app"
""")
    proc = subprocess.Popen([str(RAMPART), "--rules", str(rules), "--admin", f"127.0.0.1:{admin}",
                             "--threads", "2", "--no-watch"], stdout=subprocess.DEVNULL,
                            stderr=open(rules / "stderr.log", "w"), env={**os.environ, "RUST_LOG": "warn"},
                            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard)))
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            break
        except OSError:
            time.sleep(0.1)
    time.sleep(1)
    steps = [("start", rss_mib(proc.pid))]
    print(f"start: {steps[-1][1]:.1f} MiB", flush=True)
    get = b"GET / HTTP/1.1\r\nHost: a\r\nUser-Agent: rss/1\r\n\r\n"
    for cycle in range(1, args.cycles + 1):
        conns = []
        for _ in range(args.connections):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(get)
            conns.append(s)
        for s in conns:
            s.settimeout(10)
            s.recv(4096)
        time.sleep(0.5)
        steps.append((f"cycle {cycle}: {args.connections} idle connections", rss_mib(proc.pid)))
        print(f"{steps[-1][0]}: {steps[-1][1]:.1f} MiB", flush=True)
        for s in conns:
            s.close()
        time.sleep(1)
        steps.append((f"cycle {cycle}: closed", rss_mib(proc.pid)))
        print(f"{steps[-1][0]}: {steps[-1][1]:.1f} MiB", flush=True)
        heads = []
        line = b"X-Pad: " + b"a" * 1000 + b"\r\n"
        for _ in range(args.heads):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n" + line * 60)
            heads.append(s)
        time.sleep(0.5)
        steps.append((f"cycle {cycle}: {args.heads} unfinished 60 KB heads", rss_mib(proc.pid)))
        print(f"{steps[-1][0]}: {steps[-1][1]:.1f} MiB", flush=True)
        time.sleep(args.header_timeout_ms / 1000 + 1.5)
        for s in heads:
            s.close()
        time.sleep(1)
        steps.append((f"cycle {cycle}: heads timed out", rss_mib(proc.pid)))
        print(f"{steps[-1][0]}: {steps[-1][1]:.1f} MiB", flush=True)
    time.sleep(15)
    steps.append(("15 s later", rss_mib(proc.pid)))
    print(f"{steps[-1][0]}: {steps[-1][1]:.1f} MiB", flush=True)
    if args.trim:
        subprocess.run(["gdb", "-p", str(proc.pid), "-batch", "-ex", "call (int)malloc_trim(0)"],
                       capture_output=True, timeout=120)
        steps.append(("after malloc_trim(0)", rss_mib(proc.pid)))
        print(f"{steps[-1][0]}: {steps[-1][1]:.1f} MiB", flush=True)
    proc.terminate()
    proc.wait(10)
    server.shutdown()
    print(json.dumps(dict(steps)))


if __name__ == "__main__":
    main()
