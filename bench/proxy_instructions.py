#!/usr/bin/env python3
"""User-space instructions per request of `sidecar proxy`, counted by
cachegrind: repeatable whatever else the machine does, so two builds can be
compared exactly (wall-clock benchmarks on this shared 2-CPU machine vary
by 10-20% from round to round).

Usage: bench/proxy_instructions.py BINARY [BINARY...]
       (env: BENCH_SECONDS=10, BENCH_CONNECTIONS=8; needs valgrind, wrk, nginx)

For each binary, on loopback: an nginx upstream answering `200 ok` (and
`202` on the span path), the proxy under `valgrind --tool=cachegrind
--cache-sim=no` with one worker and every request traced (spans exported
to the upstream), and wrk against it. Instructions of the whole process,
less those of the same process started and stopped with no load, divided
by the requests wrk completed.
"""

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
from proxy_bench import UPSTREAM, nginx, wait_http  # noqa: E402


def bound_port(log_path, marker, deadline=60):
    """The port a process logged after `marker` (it bound port 0)."""
    end = time.time() + deadline
    while time.time() < end:
        with open(log_path) as f:
            m = re.search(re.escape(marker) + r"127\.0\.0\.1:(\d+)", f.read())
        if m:
            return int(m.group(1))
        time.sleep(0.1)
    raise RuntimeError(f"no `{marker}` in {log_path}")


def instructions(binary, upstream_port, tmp, seconds, conns):
    """Instructions of one proxy run (0 seconds: started and stopped only) and wrk's requests."""
    out = os.path.join(tmp, f"cachegrind.{time.monotonic_ns()}")
    log = out + ".log"
    with open(log, "w") as logf:
        proxy = subprocess.Popen(
            ["valgrind", "--tool=cachegrind", "--cache-sim=no", f"--cachegrind-out-file={out}",
             binary, "proxy", "--listen", "127.0.0.1:0", "--upstream", f"127.0.0.1:{upstream_port}",
             "--service", "bench", "--zipkin", f"http://127.0.0.1:{upstream_port}/api/v2/spans",
             "--admin", "off", "--workers", "1", "--log-level", "info"],
            stdout=subprocess.DEVNULL, stderr=logf)
    try:
        port = bound_port(log, "listener inbound on http://")
        url = f"http://127.0.0.1:{port}/"
        wait_http(url, deadline=60)
        requests = 1
        if seconds:
            res = subprocess.run(["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", url],
                                 capture_output=True, text=True, check=True).stdout
            requests += int(re.search(r"(\d+) requests in", res).group(1))
    finally:
        proxy.send_signal(signal.SIGTERM)
        proxy.wait(timeout=120)
    with open(out) as f:
        total = int(re.search(r"^summary:\s+(\d+)", f.read(), re.M).group(1))
    return total, requests


def main():
    binaries = sys.argv[1:]
    if not binaries:
        sys.exit(__doc__)
    seconds = int(os.environ.get("BENCH_SECONDS", "10"))
    conns = int(os.environ.get("BENCH_CONNECTIONS", "8"))
    tmp = tempfile.mkdtemp(prefix="proxy-instr-")
    # The upstream nginx on a port probed here (nginx cannot be handed a socket).
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        up_port = s.getsockname()[1]
    upstream = nginx(tmp, "upstream", UPSTREAM.format(port=up_port))
    try:
        wait_http(f"http://127.0.0.1:{up_port}/")
        print(f"cachegrind, wrk -t1 -c{conns} -d{seconds}s, 1 worker, every request traced\n")
        print("| binary | requests | instructions per request |")
        print("|---|---:|---:|")
        for binary in binaries:
            idle, _ = instructions(binary, up_port, tmp, 0, conns)
            loaded, requests = instructions(binary, up_port, tmp, seconds, conns)
            print(f"| {binary} | {requests:,} | {(loaded - idle) / requests:,.0f} |", flush=True)
    finally:
        upstream.send_signal(signal.SIGTERM)
        upstream.wait(timeout=15)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    main()
