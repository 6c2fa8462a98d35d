#!/usr/bin/env bash
# Benchmark: `sidecar logs` vs GNU `tail -F` vs `busybox tail -F`, in one run.
# Usage: bench/logs.sh   (env: BENCH_LINES, BENCH_ROTATION_LINES, BENCH_REPEATS,
#   BENCH_PARTS=throughput,rotation,lowrate (any subset, e.g. BENCH_PARTS=lowrate),
#   BENCH_LOWRATE_RATES=1000,20000, BENCH_LOWRATE_SECONDS=20, BENCH_STRACE_SECONDS=5,
#   BENCH_LOWRATE_TICK_MS=1; see bench/logs_bench.py)
# Record the printed tables in bench/RESULTS.md with this command.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v busybox >/dev/null || missing+=(busybox)
command -v strace >/dev/null || missing+=(strace)   # system calls per line (lowrate part)
command -v python3 >/dev/null || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y "${missing[@]}" >/dev/null ||
        { apt-get update >/dev/null && apt-get install -y "${missing[@]}" >/dev/null; }
fi
sidecar=$(bench/stage-binary "$(scripts/build-static)" "$(command -v tail)" "$(command -v busybox)")
echo "machine: $(nproc) CPUs, $(uname -r); $(tail --version | head -1); $(busybox | head -1 | cut -d' ' -f1-2)"
exec python3 bench/logs_bench.py "$sidecar"
