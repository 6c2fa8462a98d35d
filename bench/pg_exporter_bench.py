#!/usr/bin/env python3
"""Benchmark `sidecar postgres-exporter` against Debian's prometheus-postgres-exporter.

Called by bench/pg-exporter.sh. One PostgreSQL server (started here, as the
postgres user when run as root) under pgbench load; the exporters scrape it
side by side, alternating, in the same run: ours with its defaults (database
sizes re-read at most once a minute), ours reading the sizes on every scrape
as upstream does (`--collector.database.interval=0s`), and upstream's:

- scrape latency (median, p90) over N scrapes each,
- CPU seconds per scrape and peak RSS (from /proc), and what the RSS is made
  of at the end: anonymous memory (heap, stacks) and file pages (the
  executable's code, which the kernel may map in large folios),
- connections each holds to the server (its established sockets to the port),
- family coverage: how many of the upstream exporter's families ours also has,
- time to answer /metrics once the database is stopped.
"""

import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_postgres(cmd):
    if os.geteuid() == 0:
        return ["setpriv", "--reuid=postgres", "--regid=postgres", "--clear-groups", "--"] + cmd
    return cmd


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def hwm_kib(pid):
    return status_kib(pid, "VmHWM")


def connections(pid, port):
    """Established TCP connections process `pid` holds to 127.0.0.1:`port`."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    n = 0
    with open(f"/proc/{pid}/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            remote, state, inode = fields[2], fields[3], fields[9]
            if state == "01" and int(remote.split(":")[1], 16) == port and inode in inodes:
                n += 1
    return n


def get(url, timeout=30):
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=timeout) as r:
        body = r.read().decode()
    return time.perf_counter() - t0, body


def families(body):
    out = set()
    for line in body.splitlines():
        if line.startswith("# TYPE "):
            out.add(line.split()[2])
    return out


def wait_http(url, deadline=30):
    end = time.time() + deadline
    while time.time() < end:
        try:
            get(url, timeout=2)
            return
        except Exception:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer")


def psql(bindir, port, sql, db="postgres"):
    return subprocess.run(
        [os.path.join(bindir, "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", db,
         "-Atc", sql], check=True, capture_output=True, text=True).stdout.strip()


def main():
    sidecar, bindir = sys.argv[1], sys.argv[2]
    scrapes = int(os.environ.get("BENCH_SCRAPES", "200"))
    tmp = tempfile.mkdtemp(prefix="pgx-bench-")
    os.chmod(tmp, 0o777)
    data = os.path.join(tmp, "data")
    port = free_port()
    subprocess.run(as_postgres([os.path.join(bindir, "initdb"), "-D", data, "-U", "postgres",
                                "--auth=trust", "--no-sync"]), check=True, stdout=subprocess.DEVNULL)
    server = subprocess.Popen(as_postgres([
        os.path.join(bindir, "postgres"), "-D", data, "-p", str(port), "-k", tmp,
        "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=100"]),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs = []
    try:
        for _ in range(300):
            try:
                psql(bindir, port, "SELECT 1")
                break
            except subprocess.CalledProcessError:
                time.sleep(0.1)
        psql(bindir, port, "CREATE DATABASE bench")
        subprocess.run([os.path.join(bindir, "pgbench"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                        "-i", "-s", "10", "-q", "bench"], check=True, capture_output=True)
        load = subprocess.Popen([os.path.join(bindir, "pgbench"), "-h", "127.0.0.1", "-p", str(port),
                                 "-U", "postgres", "-c", "4", "-T", "3600", "bench"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(load)

        exporters = {}
        ours_port, theirs_port = free_port(), free_port()
        env = dict(os.environ, DATA_SOURCE_URI=f"127.0.0.1:{port}/postgres?sslmode=disable",
                   DATA_SOURCE_USER="postgres")
        ours = subprocess.Popen([sidecar, "postgres-exporter", "--web.listen-address", f"127.0.0.1:{ours_port}"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(ours)
        exporters["sidecar postgres-exporter"] = (ours, f"http://127.0.0.1:{ours_port}/metrics", "sidecar-postgres-exporter")
        every_port = free_port()
        every = subprocess.Popen([sidecar, "postgres-exporter", "--web.listen-address", f"127.0.0.1:{every_port}",
                                  "--collector.database.interval=0s"],
                                 env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(every)
        exporters["sidecar, sizes every scrape (interval 0s)"] = (
            every, f"http://127.0.0.1:{every_port}/metrics", "sidecar-postgres-exporter")
        theirs_env = dict(os.environ, DATA_SOURCE_NAME=(
            f"postgresql://postgres@127.0.0.1:{port}/postgres?sslmode=disable&application_name=postgres_exporter"))
        theirs_env.pop("DATA_SOURCE_URI", None)
        theirs = subprocess.Popen(["prometheus-postgres-exporter", f"--web.listen-address=127.0.0.1:{theirs_port}"],
                                  env=theirs_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(theirs)
        exporters["postgres_exporter 0.11 (Debian)"] = (theirs, f"http://127.0.0.1:{theirs_port}/metrics", "postgres_exporter")
        for _, url, _ in exporters.values():
            wait_http(url)
            for _ in range(5):  # warm up: connections, caches
                get(url)

        lat = {name: [] for name in exporters}
        cpu0 = {name: cpu_seconds(p.pid) for name, (p, _, _) in exporters.items()}
        conns = {name: 0 for name in exporters}
        for i in range(scrapes):
            for name, (_, url, app) in exporters.items():
                t, _ = get(url)
                lat[name].append(t)
            if i % 20 == 0:
                for name, (p, _, _) in exporters.items():
                    conns[name] = max(conns[name], connections(p.pid, port))
        cpu = {name: (cpu_seconds(p.pid) - cpu0[name]) / scrapes for name, (p, _, _) in exporters.items()}
        bodies = {name: get(url)[1] for name, (_, url, _) in exporters.items()}
        fams = {name: families(b) for name, b in bodies.items()}
        theirs_fams = {f for f in fams["postgres_exporter 0.11 (Debian)"]
                       if not f.startswith(("go_", "promhttp_", "postgres_exporter_"))}
        ours_fams = fams["sidecar postgres-exporter"]

        print(f"PostgreSQL: {psql(bindir, port, 'SHOW server_version')}, pgbench -c 4 running; "
              f"{scrapes} scrapes each, alternating\n")
        print("| exporter | median | p90 | CPU ms/scrape | peak RSS | RSS anon / file | connections held | families |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        ref = statistics.median(lat["postgres_exporter 0.11 (Debian)"])
        for name, (p, _, _) in exporters.items():
            s = sorted(lat[name])
            med = statistics.median(s)
            p90 = s[int(len(s) * 0.9) - 1]
            print(f"| {name} | {med * 1000:.1f} ms ({med / ref:.2f}x) | {p90 * 1000:.1f} ms "
                  f"| {cpu[name] * 1000:.2f} | {hwm_kib(p.pid) / 1024:.1f} MiB "
                  f"| {status_kib(p.pid, 'RssAnon') / 1024:.1f} / {status_kib(p.pid, 'RssFile') / 1024:.1f} MiB "
                  f"| {conns[name]} "
                  f"| {len(fams[name])} |")
        missing = sorted(theirs_fams - ours_fams)
        print(f"\nFamily coverage: ours has {len(theirs_fams) - len(missing)} of the "
              f"{len(theirs_fams)} pg_*/process_* families 0.11 exports"
              + (f"; missing: {', '.join(missing)}" if missing else ""))

        # Database down.
        load.terminate()
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)
        print("\nWith the database stopped (port refuses), time to answer /metrics:\n")
        print("| exporter | first scrape | median of 10 | pg_up |")
        print("|---|---:|---:|---|")
        for name, (_, url, _) in exporters.items():
            times = []
            up = "?"
            for _ in range(10):
                t, body = get(url, timeout=60)
                times.append(t)
                for line in body.splitlines():
                    if line.startswith("pg_up "):
                        up = line.split()[1]
            print(f"| {name} | {times[0] * 1000:.1f} ms | {statistics.median(times) * 1000:.1f} ms | {up} |")
    finally:
        for p in procs:
            p.terminate()
        if server.poll() is None:
            server.send_signal(signal.SIGINT)
            server.wait(timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    # Stopped from outside, the run still stops what it started (its
    # `finally`), instead of leaving servers and load running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    main()
