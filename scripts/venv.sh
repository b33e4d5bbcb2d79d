#!/usr/bin/env bash
# The Python virtualenv the tests and the demo use (.venv, or $VENV), filled from PyPI:
# moto (AWS Secrets Manager and Cognito), llmock (an OpenAI-compatible server) and the
# official openai client. Installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
need=()
[ -x "$VENV/bin/moto_server" ] || need+=('moto[server]')
[ -x "$VENV/bin/llmock" ] || need+=(llmock)
"$VENV/bin/python" -c 'import openai' 2>/dev/null || need+=(openai)
((${#need[@]})) || exit 0
echo "venv: installing ${need[*]}"
"$VENV/bin/pip" install -q --disable-pip-version-check "${need[@]}"
