#!/usr/bin/env bash
# Benchmark: `sidecar logs` vs GNU `tail -F` vs `busybox tail -F`, in one run.
# Usage: bench/logs.sh   (env: BENCH_LINES, BENCH_ROTATION_LINES, BENCH_REPEATS)
# Record the printed tables in bench/RESULTS.md with this command.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v busybox >/dev/null; then
    apt-get install -y busybox >/dev/null || { apt-get update >/dev/null && apt-get install -y busybox >/dev/null; }
fi
command -v python3 >/dev/null || apt-get install -y python3 >/dev/null
sidecar=$(scripts/build-static)
echo "machine: $(nproc) CPUs, $(uname -r); $(tail --version | head -1); $(busybox | head -1 | cut -d' ' -f1-2)"
exec python3 bench/logs_bench.py "$sidecar"
