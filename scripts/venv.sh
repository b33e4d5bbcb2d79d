#!/usr/bin/env bash
# The Python virtualenvs the tests and the demo use, filled from PyPI. Installs only what is
# missing.
#   .venv (or $VENV): moto (AWS Secrets Manager and Cognito), llmock (an OpenAI-compatible
#     server), the official openai client, LiteLLM's proxy with the langfuse SDK its
#     `langfuse` callback needs (4.x: LiteLLM 1.108 refuses 5.x for that callback), and an
#     MMDB writer, with which the geo tests build their own country database.
#   $VENV-langfuse5: the current langfuse SDK (OTLP protobuf exports, gzip by default).
#   $VENV-langfuse2: the 2.x SDK (the JSON ingestion API), which deployments still run.
# LiteLLM is pinned to an exact version: release 1.107.0 on PyPI was compromised (a
# credential stealer), so no range that could pull an unreviewed release is used.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
LITELLM=1.108.7
LANGFUSE_FOR_LITELLM=4.18.0
LANGFUSE_CURRENT=5.0.4
LANGFUSE_LEGACY=2.60.10
MMDB_WRITER=0.2.7

# venv DIR CHECK PACKAGE...: creates DIR if needed; installs PACKAGEs unless CHECK (a
# Python statement) succeeds in it.
venv() {
  local dir=$1 check=$2
  shift 2
  [ -x "$dir/bin/python" ] || python3 -m venv "$dir"
  if ! "$dir/bin/python" -c "$check" 2>/dev/null; then
    echo "venv: installing $* into $dir"
    "$dir/bin/pip" install -q --disable-pip-version-check "$@"
  fi
}

installed() {  # a Python check that distribution $1 is at version $2
  echo "from importlib.metadata import version; assert version('$1') == '$2'"
}

need=()
[ -x "$VENV/bin/moto_server" ] || need+=('moto[server]')
[ -x "$VENV/bin/llmock" ] || need+=(llmock)
venv "$VENV" "import openai, prometheus_client; $(installed litellm $LITELLM); $(installed langfuse $LANGFUSE_FOR_LITELLM); $(installed mmdb_writer $MMDB_WRITER)" \
  openai prometheus_client "litellm[proxy]==$LITELLM" "langfuse==$LANGFUSE_FOR_LITELLM" "mmdb-writer==$MMDB_WRITER"
((${#need[@]} == 0)) || "$VENV/bin/pip" install -q --disable-pip-version-check "${need[@]}"
venv "$VENV-langfuse5" "$(installed langfuse $LANGFUSE_CURRENT)" "langfuse==$LANGFUSE_CURRENT"
venv "$VENV-langfuse2" "$(installed langfuse $LANGFUSE_LEGACY)" "langfuse==$LANGFUSE_LEGACY"
