#!/usr/bin/env python3
"""`sidecar injector` under load (bench/injector.sh runs this).

The injector serves HTTPS on 127.0.0.1 with a certificate from its own
`--generate-cert`; `hey` sends BENCH_REVIEWS AdmissionReviews (default
1,000, rounded up to a whole number per client: 1,008) from BENCH_CLIENTS concurrent clients (default 16) on kept-alive
connections, as the API server does, BENCH_ROUNDS times (default 3) per
case. Cases: demo 1's website Pod with `sidecar.dev/logs` (the injector
answers with a JSONPatch) and the same Pod without annotations (let
through), each over HTTP/1.1 and HTTP/2. Latency is per review as `hey`
measured it (its CSV output), so it includes waiting for a CPU: the load
generator shares the machine's cores with the injector. CPU per review is
the injector's user+system time (from /proc) over the reviews it served;
peak RSS is its VmHWM at the end. There is no peer to compare with here
(Istio's and Linkerd's injectors need a cluster), so the figures are
absolute, against the issue's targets: p99 under 10 ms, RSS under 20 MiB.
No namespace lookups: `--kube-api off` (with a cluster, a Namespace's
annotations are fetched once per 10 s per namespace).
"""

import base64
import csv
import io
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

CLIENTS = int(os.environ.get("BENCH_CLIENTS", "16"))
# hey sends a whole number of reviews per client: at least BENCH_REVIEWS.
REVIEWS = -(-int(os.environ.get("BENCH_REVIEWS", "1000")) // CLIENTS) * CLIENTS
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
TICKS = os.sysconf("SC_CLK_TCK")
# The name the API server connects to. hey puts its Host header (with the
# port, unless -host sets it) into TLS's server name, which a server must
# refuse as a name.
HOST = "sidecar-injector.sidecar-system.svc"


def pod(annotations):
    """Demo 1's website Pod as a ReplicaSet creates it (generateName, no name)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "web-5d8f7c9b4-",
            "namespace": "default",
            "labels": {"app": "web", "pod-template-hash": "5d8f7c9b4"},
            "annotations": annotations,
        },
        "spec": {
            "containers": [{
                "name": "web",
                "image": "widgetario/web:dotnet-serilog",
                "ports": [{"containerPort": 80, "name": "web"}],
                "env": [{"name": "Serilog__WriteTo__0__Name", "value": "File"}],
            }],
        },
    }


def review(obj, uid):
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "default",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": obj,
            "dryRun": False,
        },
    }


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def start(sidecar, tmp):
    out = subprocess.run([sidecar, "injector", "--generate-cert"], check=True,
                         capture_output=True, text=True).stdout
    for key, name in (("tls.crt", "tls.crt"), ("tls.key", "tls.key")):
        m = re.search(rf"^  {re.escape(key)}: (\S+)$", out, re.M)
        with open(os.path.join(tmp, name), "wb") as f:
            f.write(base64.b64decode(m.group(1)))
    log = open(os.path.join(tmp, "injector.log"), "w+")
    proc = subprocess.Popen(
        [sidecar, "injector", "--listen", "127.0.0.1:0", "--admin", "off",
         "--tls-cert", os.path.join(tmp, "tls.crt"), "--tls-key", os.path.join(tmp, "tls.key"),
         "--kube-api", "off"],
        stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.time() + 20
    while time.time() < deadline:
        log.seek(0)
        m = re.search(r"webhook on https://(\S+?)/mutate", log.read())
        if m:
            return proc, m.group(1)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    log.seek(0)
    sys.exit(f"the injector did not start:\n{log.read()}")


def run_hey(url, body_file, h2):
    args = ["hey", "-n", str(REVIEWS), "-c", str(CLIENTS), "-m", "POST", "-host", HOST,
            "-T", "application/json", "-D", body_file, "-o", "csv"]
    if h2:
        args.append("-h2")
    t0 = time.monotonic()
    out = subprocess.run(args + [url], check=True, capture_output=True, text=True).stdout
    wall = time.monotonic() - t0
    rows = list(csv.DictReader(io.StringIO(out)))
    codes = {r["status-code"] for r in rows}
    if codes != {"200"} or len(rows) != REVIEWS:
        sys.exit(f"hey: {len(rows)} answers, status codes {codes}")
    return sorted(float(r["response-time"]) * 1000 for r in rows), wall


def pct(values, p):
    return values[min(len(values) - 1, int(round(p / 100 * len(values) + 0.5)) - 1)]


def main():
    sidecar = sys.argv[1]
    with tempfile.TemporaryDirectory() as tmp:
        proc, addr = start(sidecar, tmp)
        url = f"https://{addr}/mutate"
        bodies = {}
        for case, ann in (("injected", {"sidecar.dev/logs": "/logs/app.log"}), ("let through", {})):
            path = os.path.join(tmp, case.replace(" ", "-") + ".json")
            with open(path, "w") as f:
                json.dump(review(pod(ann), "705ab4f5-6393-11e8-b7cc-42010a800002"), f)
            bodies[case] = path
        # What the injector answers, once, so the table says what was measured.
        out = subprocess.run(["hey", "-n", "1", "-c", "1", "-m", "POST", "-host", HOST,
                              "-T", "application/json",
                              "-D", bodies["injected"], url], check=True, capture_output=True, text=True)
        assert "[200]" in out.stdout, out.stdout
        results = {}
        for rnd in range(ROUNDS):
            for case in bodies:
                for h2 in (False, True):
                    before = cpu_seconds(proc.pid)
                    lat, wall = run_hey(url, bodies[case], h2)
                    cpu = cpu_seconds(proc.pid) - before
                    results.setdefault((case, h2), []).append((lat, cpu, wall))
        hwm = status_kib(proc.pid, "VmHWM")
        rss = status_kib(proc.pid, "VmRSS")
        proc.terminate()
        proc.wait(timeout=10)
    print(f"{REVIEWS} reviews x {ROUNDS} rounds per case, {CLIENTS} concurrent clients, "
          "keep-alive; cases in turns\n")
    print("| case | HTTP | p50 | p90 | p99 (rounds) | max | reviews/s (hey run) | CPU ms/review |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for (case, h2), runs in results.items():
        p50 = statistics.median(pct(lat, 50) for lat, _, _ in runs)
        p90 = statistics.median(pct(lat, 90) for lat, _, _ in runs)
        p99s = [pct(lat, 99) for lat, _, _ in runs]
        mx = max(lat[-1] for lat, _, _ in runs)
        cpu = statistics.median(c for _, c, _ in runs) * 1000 / REVIEWS
        rate = statistics.median(REVIEWS / wall for _, _, wall in runs)
        print(f"| {case} | {'2' if h2 else '1.1'} | {p50:.2f} ms | {p90:.2f} ms | "
              f"{statistics.median(p99s):.2f} ms ({', '.join(f'{p:.2f}' for p in p99s)}) | "
              f"{mx:.1f} ms | {rate:,.0f} | {cpu:.3f} |")
    print(f"\nInjector peak RSS (VmHWM) {hwm / 1024:.1f} MiB, RSS at the end {rss / 1024:.1f} MiB, "
          f"after {ROUNDS * 4 * REVIEWS + 1:,} reviews")


if __name__ == "__main__":
    main()
