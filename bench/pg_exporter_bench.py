#!/usr/bin/env python3
"""Benchmark `sidecar postgres-exporter` against Debian's prometheus-postgres-exporter.

Called by bench/pg-exporter.sh. One PostgreSQL server (started here, as the
postgres user when run as root) under pgbench load; the exporters scrape it
side by side, taking turns scrape by scrape, in rounds: ours with its
defaults (database sizes re-read at most once a minute) and upstream's, each
logging in as deployments do (`scram`: a role with a password,
scram-sha-256 in pg_hba.conf, the password in DATA_SOURCE_PASS, or in
upstream's DATA_SOURCE_NAME) and with `trust` (a role without a password);
with BENCH_EVERY=1 also ours reading the sizes on every scrape as upstream
does (`--collector.database.interval=0s`). Environment: BENCH_SCRAPES
(per exporter and round, default 200), BENCH_ROUNDS (default 3),
BENCH_AUTH (default `scram,trust`), BENCH_LOAD (pgbench's load options,
default `-c 2`, e.g. `-c 2 -R 100`).

- scrape latency (median, p90) over N scrapes each: the median of the
  rounds' medians, and its ratio to upstream's with the same authentication,
- CPU milliseconds per scrape (all rounds) and peak RSS (from /proc), and what the RSS is made
  of at the end: anonymous memory (heap, stacks) and file pages (the
  executable's code, which the kernel may map in large folios), and how much
  of our code is resident inside the hot region (crates/sidecar/hot-text.ld)
  and outside it,
- connections each holds to the server (its established sockets to the port),
- family coverage: how many of the upstream exporter's families ours also has,
- time to answer /metrics once the database is stopped.
"""

import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
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


def text_sections(exe):
    """{name: (start, end)} of the executable's code sections, from readelf."""
    out = subprocess.run(["readelf", "-SW", exe], capture_output=True, text=True).stdout
    secs = {}
    for line in out.splitlines():
        m = re.match(r"\s*\[\s*\d+\]\s+(\.text\S*)\s+\S+\s+([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)", line)
        if m:
            start = int(m.group(2), 16)
            secs[m.group(1)] = (start, start + int(m.group(3), 16))
    return secs


def resident_code_kib(pid, exe):
    """KiB of the executable's code resident in process `pid`, per code section
    (.text.hot is what crates/sidecar/hot-text.ld gathers; code that runs
    outside it means that list is out of date: rerun scripts/hot-text)."""
    secs = text_sections(exe)
    real = os.path.realpath(exe)
    maps = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 6 and os.path.realpath(fields[5]) == real:
                lo, hi = (int(x, 16) for x in fields[0].split("-"))
                maps.append((lo, hi, int(fields[2], 16)))
    if not maps or not secs:
        return {}
    bias = min(lo - off for lo, _, off in maps)
    kib = {name: 0 for name in secs}
    with open(f"/proc/{pid}/pagemap", "rb") as pm:
        for lo, hi, _ in maps:
            for addr in range(lo, hi, 4096):
                pm.seek(addr // 4096 * 8)
                if not int.from_bytes(pm.read(8), "little") >> 63:
                    continue
                for name, (start, end) in secs.items():
                    if start <= addr - bias < end:
                        kib[name] += 4
    return kib


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


PASSWORD = "bench-Scram-pw#1"
THEIRS = "postgres_exporter 0.11 (Debian)"


def main():
    sidecar, bindir = sys.argv[1], sys.argv[2]
    scrapes = int(os.environ.get("BENCH_SCRAPES", "200"))
    rounds = int(os.environ.get("BENCH_ROUNDS", "3"))
    auths = [a for a in os.environ.get("BENCH_AUTH", "scram,trust").split(",") if a]
    load_opts = os.environ.get("BENCH_LOAD", "-c 2").split()
    every_too = os.environ.get("BENCH_EVERY") == "1"
    tmp = tempfile.mkdtemp(prefix="pgx-bench-")
    os.chmod(tmp, 0o777)
    data = os.path.join(tmp, "data")
    port = free_port()
    subprocess.run(as_postgres([os.path.join(bindir, "initdb"), "-D", data, "-U", "postgres",
                                "--auth=trust", "--no-sync"]), check=True, stdout=subprocess.DEVNULL)
    # The monitoring roles: mon_scram logs in with scram-sha-256 and a
    # password, mon_trust without one; the load and the set-up as postgres.
    with open(os.path.join(data, "pg_hba.conf"), "w") as f:
        f.write("local all all trust\n"
                "host all postgres 127.0.0.1/32 trust\n"
                "host all mon_trust 127.0.0.1/32 trust\n"
                "host all all 127.0.0.1/32 scram-sha-256\n")
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
        psql(bindir, port, "SET password_encryption = 'scram-sha-256'; "
             f"CREATE ROLE mon_scram LOGIN PASSWORD '{PASSWORD}' IN ROLE pg_monitor; "
             "CREATE ROLE mon_trust LOGIN IN ROLE pg_monitor")
        subprocess.run([os.path.join(bindir, "pgbench"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                        "-i", "-s", "10", "-q", "bench"], check=True, capture_output=True)
        load = subprocess.Popen([os.path.join(bindir, "pgbench"), "-h", "127.0.0.1", "-p", str(port),
                                 "-U", "postgres", *load_opts, "-T", "3600", "bench"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(load)

        exporters = {}
        for auth in auths:
            user = f"mon_{auth}"
            env = dict(os.environ, DATA_SOURCE_URI=f"127.0.0.1:{port}/postgres?sslmode=disable",
                       DATA_SOURCE_USER=user)
            for var in ("DATA_SOURCE_NAME", "DATA_SOURCE_PASS"):
                env.pop(var, None)
            if auth == "scram":
                env["DATA_SOURCE_PASS"] = PASSWORD
            variants = [("sidecar postgres-exporter", [])]
            if every_too:
                variants.append(("sidecar, sizes every scrape (interval 0s)", ["--collector.database.interval=0s"]))
            for name, extra in variants:
                p_port = free_port()
                p = subprocess.Popen([sidecar, "postgres-exporter", "--web.listen-address",
                                      f"127.0.0.1:{p_port}", *extra],
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                procs.append(p)
                exporters[(name, auth)] = (p, f"http://127.0.0.1:{p_port}/metrics", "sidecar-postgres-exporter")
            password = f":{urllib.parse.quote(PASSWORD, safe='')}" if auth == "scram" else ""
            theirs_env = dict(os.environ, DATA_SOURCE_NAME=(
                f"postgresql://{user}{password}@127.0.0.1:{port}/postgres?sslmode=disable"
                "&application_name=postgres_exporter"))
            for var in ("DATA_SOURCE_URI", "DATA_SOURCE_USER", "DATA_SOURCE_PASS"):
                theirs_env.pop(var, None)
            t_port = free_port()
            theirs = subprocess.Popen(["prometheus-postgres-exporter", f"--web.listen-address=127.0.0.1:{t_port}"],
                                      env=theirs_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(theirs)
            exporters[(THEIRS, auth)] = (theirs, f"http://127.0.0.1:{t_port}/metrics", "postgres_exporter")
        for _, url, _ in exporters.values():
            wait_http(url)
            for _ in range(5):  # warm up: connections, caches
                get(url)

        medians = {key: [] for key in exporters}
        lat = {key: [] for key in exporters}
        cpu0 = {key: cpu_seconds(p.pid) for key, (p, _, _) in exporters.items()}
        conns = {key: 0 for key in exporters}
        for _ in range(rounds):
            this_round = {key: [] for key in exporters}
            for i in range(scrapes):
                for key, (_, url, _) in exporters.items():
                    t, body = get(url)
                    this_round[key].append(t)
                    if i == 0 and "pg_up 1" not in body:
                        raise RuntimeError(f"{key}: pg_up is not 1")
                if i % 20 == 0:
                    for key, (p, _, _) in exporters.items():
                        conns[key] = max(conns[key], connections(p.pid, port))
            for key, times in this_round.items():
                medians[key].append(statistics.median(times))
                lat[key].extend(times)
        cpu = {key: (cpu_seconds(p.pid) - cpu0[key]) / (scrapes * rounds)
               for key, (p, _, _) in exporters.items()}
        bodies = {key: get(url)[1] for key, (_, url, _) in exporters.items()}
        fams = {key: families(b) for key, b in bodies.items()}
        auth0 = auths[0]
        theirs_fams = {f for f in fams[(THEIRS, auth0)]
                       if not f.startswith(("go_", "promhttp_", "postgres_exporter_"))}
        ours_fams = fams[("sidecar postgres-exporter", auth0)]

        print(f"PostgreSQL: {psql(bindir, port, 'SHOW server_version')}, pgbench {' '.join(load_opts)} running; "
              f"{rounds} rounds of {scrapes} scrapes each, the exporters taking turns\n")
        print("| exporter | auth | median (rounds) | vs upstream | p90 | CPU ms/scrape | vs upstream "
              "| peak RSS | RSS anon / file | connections held | families |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for (name, auth), (p, _, _) in exporters.items():
            s_all = sorted(lat[(name, auth)])
            med = statistics.median(medians[(name, auth)])
            ref = statistics.median(medians[(THEIRS, auth)])
            rounds_text = ", ".join(f"{m * 1000:.1f}" for m in medians[(name, auth)])
            p90 = s_all[int(len(s_all) * 0.9) - 1]
            print(f"| {name} | {auth} | {med * 1000:.1f} ms ({rounds_text}) | {med / ref:.2f}x "
                  f"| {p90 * 1000:.1f} ms "
                  f"| {cpu[(name, auth)] * 1000:.2f} | {cpu[(name, auth)] / cpu[(THEIRS, auth)]:.2f}x "
                  f"| {hwm_kib(p.pid) / 1024:.1f} MiB "
                  f"| {status_kib(p.pid, 'RssAnon') / 1024:.1f} / {status_kib(p.pid, 'RssFile') / 1024:.1f} MiB "
                  f"| {conns[(name, auth)]} "
                  f"| {len(fams[(name, auth)])} |")
        for auth in auths:
            ours_rss = hwm_kib(exporters[("sidecar postgres-exporter", auth)][0].pid)
            theirs_rss = hwm_kib(exporters[(THEIRS, auth)][0].pid)
            print(f"\nPeak RSS, {auth}: {ours_rss / theirs_rss:.2f}x upstream's")
            code = resident_code_kib(exporters[("sidecar postgres-exporter", auth)][0].pid, sidecar)
            if code:
                print("Ours, resident code: " + ", ".join(f"{k} {v} KiB" for k, v in code.items()))
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
        for (name, auth), (_, url, _) in exporters.items():
            times = []
            up = "?"
            for _ in range(10):
                t, body = get(url, timeout=60)
                times.append(t)
                for line in body.splitlines():
                    if line.startswith("pg_up "):
                        up = line.split()[1]
            print(f"| {name}, {auth} | {times[0] * 1000:.1f} ms | {statistics.median(times) * 1000:.1f} ms | {up} |")
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
