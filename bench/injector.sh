#!/usr/bin/env bash
# Benchmark: `sidecar injector` under load: AdmissionReviews over HTTPS from
# `hey` (1,000 reviews, 16 concurrent clients, keep-alive), HTTP/1.1 and
# HTTP/2, a Pod that gets the sidecars and one that is let through.
# Usage: bench/injector.sh   (env: BENCH_REVIEWS=1000 (rounded up to a multiple of the clients), BENCH_CLIENTS=16, BENCH_ROUNDS=3)
# Record the printed table in bench/RESULTS.md with this command.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
for pkg in hey python3; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
        apt-get update >/dev/null && apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; }
fi
sidecar=$(bench/stage-binary "$(scripts/build-static)")
echo "machine: $(nproc) CPUs, $(uname -r); hey $(dpkg-query -W -f='${Version}' hey)"
exec python3 bench/injector_bench.py "$sidecar"
