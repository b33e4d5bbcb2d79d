#!/usr/bin/env bash
# A short libFuzzer run of every fuzz target (FUZZ_SECONDS each, 30 by default), as CI runs
# it: long enough to catch a parser that panics or breaks its properties on the first odd
# inputs. Longer runs: fuzz/README.md.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${FUZZ_SECONDS:-30}
command -v cargo-fuzz >/dev/null || cargo install --locked --quiet cargo-fuzz@0.13.2
# The stable toolchain accepts the sanitizer flags cargo-fuzz passes with this.
export RUSTC_BOOTSTRAP=1
cargo fuzz build
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for target in $(cargo fuzz list); do
  echo "fuzz: $target for ${seconds}s"
  if ! cargo fuzz run "$target" -- -max_total_time="$seconds" >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "fuzz: $target failed; the input is under fuzz/artifacts/$target" >&2
    exit 1
  fi
  grep -E '^Done' "$log" || true
done
echo "fuzz: every target ran ${seconds}s without a failure"
