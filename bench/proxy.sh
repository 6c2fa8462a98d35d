#!/usr/bin/env bash
# Benchmark: `sidecar proxy` vs nginx (keep-alive reverse proxy) with wrk, in one run.
# Usage: bench/proxy.sh   (env: BENCH_SECONDS=10, BENCH_ROUNDS=3, BENCH_CONNECTIONS=32)
# Record the printed table in bench/RESULTS.md with this command.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
for pkg in wrk nginx-light python3; do
    dpkg -s "$pkg" >/dev/null 2>&1 || dpkg -s "${pkg%-light}" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
        apt-get update >/dev/null && apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; }
fi
# The package starts an nginx of its own where systemd runs; the benchmark starts its own.
systemctl stop nginx >/dev/null 2>&1 || true
sidecar=$(bench/stage-binary "$(scripts/build-static)" "$(command -v nginx)")
echo "machine: $(nproc) CPUs, $(uname -r); $(nginx -v 2>&1); $(wrk -v 2>&1 | head -1)"
exec python3 bench/proxy_bench.py "$sidecar"
