#!/usr/bin/env bash
# The supply chain, checked in CI: cargo-deny's licences, bans, sources and advisories (the
# advisories against the RustSec snapshot in ../shared/advisory-db: CI cannot reach GitHub).
set -euo pipefail
cd "$(dirname "$0")/.."
snapshot=${ADVISORY_DB:-../shared/advisory-db}
if [ ! -d "$snapshot/crates" ]; then
  echo "supply-chain: no advisory database at $snapshot (set ADVISORY_DB)" >&2
  exit 1
fi
command -v cargo-deny >/dev/null || cargo install --locked --quiet cargo-deny@0.20.2

# cargo-deny reads a git clone named after the database's URL; the snapshot is a plain
# directory, so it becomes a one-commit repository dated as the snapshot says.
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
db="$root/advisory-db-3157b0e258782691"   # the name cargo-deny gives RustSec's default URL
cp -r "$snapshot" "$db"
date=$(grep -oE '[0-9]{4}-[0-9]{2}-[0-9]{2}' "$snapshot/SNAPSHOT.md" | head -1 || true)
date=${date:-$(date -u +%F)}
git -C "$db" init -q
git -C "$db" add -A
GIT_COMMITTER_DATE="${date}T00:00:00Z" git -C "$db" -c user.name=rampart-ci -c user.email=ci@localhost \
  commit -q --date "${date}T00:00:00Z" -m "RustSec advisory-db snapshot ($date)"

# Offline, cargo metadata needs every platform's crates already downloaded.
cargo fetch --quiet
CARGO_DENY_DB_ROOT="$root" cargo deny --offline --log-level error check
echo "supply-chain: ok (advisories as of $date)"
