#!/usr/bin/env bash
# Makes a self-signed development certificate (localhost, rampart.test, 127.0.0.1) and key for a TLS listener:
#   certs/make-dev-cert.sh [OUT_DIR]   -> OUT_DIR/cert.pem, OUT_DIR/key.pem (default certs/dev)
# For development and tests only; production certificates come from your PKI.
set -euo pipefail
out=${1:-$(dirname "$0")/dev}
mkdir -p "$out"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
  -subj "/CN=localhost" \
  -addext "subjectAltName=DNS:localhost,DNS:rampart.test,IP:127.0.0.1" \
  -keyout "$out/key.pem" -out "$out/cert.pem" 2>/dev/null
chmod 600 "$out/key.pem"
echo "wrote $out/cert.pem and $out/key.pem"
