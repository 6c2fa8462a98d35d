#!/usr/bin/env bash
# Benchmark: `sidecar postgres-exporter` vs Debian's prometheus-postgres-exporter, in one run.
# Usage: bench/pg-exporter.sh   (env: BENCH_SCRAPES per exporter and round, default 200;
#   BENCH_ROUNDS, default 3; BENCH_AUTH, default scram,trust; BENCH_LOAD, pgbench's
#   load options, default "-c 2", e.g. "-c 2 -R 100"; BENCH_EVERY=1 adds ours with
#   --collector.database.interval=0s). See bench/pg_exporter_bench.py.
# Record the printed tables in bench/RESULTS.md with this command.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
for pkg in postgresql prometheus-postgres-exporter python3; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
        apt-get update >/dev/null && apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; }
fi
# The package starts an exporter of its own where systemd runs; this benchmark starts its own.
systemctl stop prometheus-postgres-exporter >/dev/null 2>&1 || true
sidecar=$(bench/stage-binary "$(scripts/build-static)" "$(command -v prometheus-postgres-exporter)")
bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
echo "machine: $(nproc) CPUs, $(uname -r); $(prometheus-postgres-exporter --version 2>&1 | head -1)"
exec python3 bench/pg_exporter_bench.py "$sidecar" "$bindir"
