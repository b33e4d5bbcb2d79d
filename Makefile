# rampart: the commands README.md promises, and the checks CI runs.
.PHONY: demo run test lint check bench certs image

# Run rampart on the shipped rules in the seed's topology (LiteLLM, VictoriaMetrics, traces
# to a Langfuse stand-in), and show what it refuses and what it lets through.
demo:
	bash scripts/deps.sh demo
	bash scripts/demo.sh

# Serve the shipped rules on their real ports (80, 8080, 9090 need root or CAP_NET_BIND_SERVICE).
run:
	cargo run --release -p rampart -- --rules rules

# The whole test suite: unit tests and the end-to-end tests against the real binary.
test:
	bash scripts/deps.sh test
	bash scripts/venv.sh
	cargo build -p rampart --bin rampart
	cargo test --workspace

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

# Validate the rules directory as a reload would.
check:
	cargo run -q -p rampart -- check rules

# Criterion benches of the plugins, then the side-by-side load run against nginx and
# nginx + ModSecurity + CRS (report in target/bench/report.md; see docs/benchmarks.md).
bench:
	bash scripts/deps.sh bench
	cargo bench -p rampart-benches
	cargo build --release -p rampart --bin rampart -p rampart-benches --examples
	python3 benches/load/run.py

certs:
	bash certs/make-dev-cert.sh certs/dev

# The container image, built with podman here (base bootstrapped from the Debian archive,
# the binary built on this host), then run as non-root: /live, a proxied request, a reload.
image:
	bash scripts/deps.sh image
	bash scripts/image.sh all
