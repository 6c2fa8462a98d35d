#!/usr/bin/env python3
"""Benchmark `sidecar proxy` against nginx as a keep-alive reverse proxy, with wrk.

Called by bench/proxy.sh. In one run, on loopback:
- upstream: nginx (1 worker) answering `200 ok` on /, and `202` on the span
  collector path (so the proxy really exports its spans);
- wrk against the upstream directly, through `sidecar proxy` (1 worker,
  tracing on, every request sampled) and through nginx (1 worker, proxy_pass
  with upstream keepalive), alternating rounds;
- requests/s, p50/p99 latency, and RSS idle and under load; and the
  sidecar's ratios to nginx per round (the two proxies run back to back,
  in turns first), which the machine's drift over a run does not move;
- the CPU time each proxy process spends per request (all its threads, from
  /proc/PID/task/*/schedstat), and the whole machine's (from /proc/stat):
  with wrk, the upstream and the proxy sharing this machine's CPUs,
  requests/s also depends on how the scheduler places them, while CPU per
  request is the proxy's own cost.
"""

import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, deadline=20):
    end = time.time() + deadline
    while time.time() < end:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except Exception:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer")


def rss_kib(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def cpu_ns(pid):
    """CPU time of all threads of `pid` so far, in ns (0 once it is gone)."""
    total = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return total


def machine_busy_s():
    """Seconds all CPUs were busy so far (not idle or iowait)."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def wrk(url, seconds, connections, pid=None):
    before, busy = (cpu_ns(pid) if pid else 0), machine_busy_s()
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url],
                         capture_output=True, text=True, check=True).stdout
    proxy_ns, busy = (cpu_ns(pid) - before if pid else 0), machine_busy_s() - busy
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    done = int(re.search(r"(\d+) requests in", out).group(1))

    def lat(p):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    # CPU microseconds per request: the proxy's, and the whole machine's.
    per_request = (proxy_ns / 1000 / done, busy * 1e6 / done) if done else (0.0, 0.0)
    return rps, lat(50), lat(99), int(errors.group(1)) if errors else 0, *per_request


NGINX_CONF = """
worker_processes 1;
daemon off;
error_log {tmp}/error.log warn;
pid {tmp}/nginx-{name}.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fcgi; uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
    {body}
}}
"""

UPSTREAM = """
    server {{
        listen 127.0.0.1:{port};
        location / {{ default_type text/plain; return 200 "ok\\n"; }}
        location /api/v2/spans {{ return 202; }}
    }}
"""

PROXY = """
    upstream app {{ server 127.0.0.1:{upstream}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
"""


def nginx(tmp, name, body):
    conf = os.path.join(tmp, f"{name}.conf")
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(tmp=tmp, name=name, body=body))
    return subprocess.Popen(["nginx", "-c", conf, "-e", os.path.join(tmp, "error.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def nginx_worker(master):
    out = subprocess.run(["pgrep", "-P", str(master.pid)], capture_output=True, text=True).stdout.split()
    return int(out[0])


def main():
    sidecar = sys.argv[1]
    seconds = int(os.environ.get("BENCH_SECONDS", "10"))
    rounds = int(os.environ.get("BENCH_ROUNDS", "3"))
    conns = int(os.environ.get("BENCH_CONNECTIONS", "32"))
    tmp = tempfile.mkdtemp(prefix="proxy-bench-")
    up_port, side_port, ngx_port, admin_port = free_port(), free_port(), free_port(), free_port()
    procs = []
    try:
        procs.append(nginx(tmp, "upstream", UPSTREAM.format(port=up_port)))
        wait_http(f"http://127.0.0.1:{up_port}/")
        side = subprocess.Popen([sidecar, "proxy", "--listen", f"127.0.0.1:{side_port}",
                                 "--upstream", f"127.0.0.1:{up_port}", "--service", "bench",
                                 "--zipkin", f"http://127.0.0.1:{up_port}/api/v2/spans",
                                 "--admin", f"127.0.0.1:{admin_port}", "--workers", "1",
                                 "--log-level", "warn"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(side)
        ngx = nginx(tmp, "proxy", PROXY.format(port=ngx_port, upstream=up_port))
        procs.append(ngx)
        for port in (side_port, ngx_port):
            wait_http(f"http://127.0.0.1:{port}/")
        time.sleep(0.5)
        ngx_worker = nginx_worker(ngx)
        idle = {"sidecar proxy": rss_kib(side.pid), "nginx": rss_kib(ngx_worker)}
        targets = {
            "direct (no proxy)": f"http://127.0.0.1:{up_port}/",
            "sidecar proxy": f"http://127.0.0.1:{side_port}/",
            "nginx": f"http://127.0.0.1:{ngx_port}/",
        }
        pids = {"sidecar proxy": side.pid, "nginx": ngx_worker}
        results = {name: [] for name in targets}
        for round_ in range(rounds):
            # The two proxies swap places every round, so neither always
            # runs right after the other.
            names = list(targets)
            if round_ % 2:
                names[1], names[2] = names[2], names[1]
            for name in names:
                results[name].append(wrk(targets[name], seconds, conns, pids.get(name)))
        loaded = {"sidecar proxy": rss_kib(side.pid, "VmHWM"), "nginx": rss_kib(ngx_worker, "VmHWM")}
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics").read().decode()
        exported = sum(float(l.split()[-1]) for l in metrics.splitlines()
                       if l.startswith("sidecar_proxy_spans_exported_total"))
        dropped = sum(float(l.split()[-1]) for l in metrics.splitlines()
                      if l.startswith("sidecar_proxy_spans_dropped_total"))

        print(f"wrk -t1 -c{conns} -d{seconds}s, {rounds} rounds each (median), alternating; "
              f"proxies with 1 worker; sidecar samples every request\n")
        print("| path | requests/s | vs nginx | p50 | p99 | non-2xx | RSS idle | peak RSS under load "
              "| proxy CPU per request | machine CPU per request |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        ngx_rps = statistics.median(r[0] for r in results["nginx"])
        for name, rs in results.items():
            rps = statistics.median(r[0] for r in rs)
            p50 = statistics.median(r[1] for r in rs)
            p99 = statistics.median(r[2] for r in rs)
            errors = sum(r[3] for r in rs)
            idle_s = f"{idle[name] / 1024:.1f} MiB" if name in idle else "-"
            load_s = f"{loaded[name] / 1024:.1f} MiB" if name in loaded else "-"
            ratio = f"{rps / ngx_rps:.2f}x" if name != "direct (no proxy)" else "-"
            proxy_cpu = f"{statistics.median(r[4] for r in rs):.1f} us" if name in pids else "-"
            machine_cpu = f"{statistics.median(r[5] for r in rs):.1f} us"
            print(f"| {name} | {rps:,.0f} | {ratio} | {p50:.2f} ms | {p99:.2f} ms | {errors} | {idle_s} | {load_s} "
                  f"| {proxy_cpu} | {machine_cpu} |")
        # Each round's sidecar run against that round's nginx run, next to
        # it in time: the machine's drift over a run cancels out of these.
        pairs = [(s[0] / n[0], s[2] / n[2], s[4] / n[4]) for s, n in zip(results["sidecar proxy"], results["nginx"])]
        rps_ratios = sorted(p[0] for p in pairs)
        p99_ratios = sorted(p[1] for p in pairs)
        cpu_ratios = sorted(p[2] for p in pairs)
        print(f"\nper round, sidecar / nginx: requests/s median {statistics.median(rps_ratios):.2f}x "
              f"(range {rps_ratios[0]:.2f}-{rps_ratios[-1]:.2f}, {sum(r >= 1 for r in rps_ratios)} of "
              f"{len(pairs)} rounds at least nginx's); p99 median {statistics.median(p99_ratios):.2f}x "
              f"(range {p99_ratios[0]:.2f}-{p99_ratios[-1]:.2f}); proxy CPU per request median "
              f"{statistics.median(cpu_ratios):.2f}x (range {cpu_ratios[0]:.2f}-{cpu_ratios[-1]:.2f}, "
              f"{sum(r <= 1 for r in cpu_ratios)} of {len(pairs)} rounds at most nginx's)")
        print(f"spans exported by the sidecar: {exported:,.0f}, dropped: {dropped:,.0f}")
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    # Stopped from outside, the run still stops what it started (its
    # `finally`), instead of leaving servers and load running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    main()
