#!/usr/bin/env python3
"""Writes the linker script of the code `sidecar postgres-exporter` runs (called by scripts/hot-text).

Arguments: BINARY MAP PG_BINDIR WORKDIR OUTPUT. BINARY is the static build the
linker wrote MAP for. A PostgreSQL server (TLS on) is started in WORKDIR (as
the postgres user when run as root); the exporter runs under callgrind five
times: logging in with scram-sha-256 (DATA_SOURCE_URI/USER/PASS, as the seed
deploys it) and with trust (DATA_SOURCE_NAME); then with the database
refusing connections and with a wrong password (pg_up 0); then over TLS
(sslmode=require). Sections are placed in that order of need, each by the
first run that ran it, and by name within a run. Each run serves the landing
page, /live, /ready and scrapes as Prometheus, curl and Python send them,
then stops on SIGTERM. Every instruction address callgrind saw is mapped to
the input section holding it in MAP; a few sections callgrind cannot see run
are added by name (ALSO, WHOLE). OUTPUT lists those sections by exact name,
then once more by name without the symbol hash, so that a build with other
hashes (another toolchain, target or dependency version) still finds most of
them. To check a list natively: `perf record -e page-faults -d` on the
exporter, then map each fault's address outside .text.hot through the map.
"""

import bisect
import http.client
import os
import pwd
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

PASSWORD = "hot-Text-pw#1"
SCRAPES = 12


def as_postgres(cmd):
    if os.geteuid() == 0:
        return ["setpriv", "--reuid=postgres", "--regid=postgres", "--clear-groups", "--"] + cmd
    return cmd


def wait_for(url, proc, deadline):
    end = time.time() + deadline
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"the exporter exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {deadline} s")


def fetch(url, headers=None):
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=120) as r:
        return r.read().decode()


# What Prometheus sends with a scrape (v3), on a kept-alive connection.
PROMETHEUS_HEADERS = {
    "Accept": "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,"
              "application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;"
              "escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1",
    "Accept-Encoding": "gzip",
    "User-Agent": "Prometheus/3.5.0",
    "X-Prometheus-Scrape-Timeout-Seconds": "10",
}


def scrapes(host, port, n):
    """n scrapes from three kinds of client: Prometheus (kept alive), urllib
    (the benchmark's) and curl's headers; returns the bodies."""
    bodies = []
    conn = http.client.HTTPConnection(host, port, timeout=120)
    try:
        for i in range(n):
            kind = i % 3
            if kind == 0:
                conn.request("GET", "/metrics", headers=PROMETHEUS_HEADERS)
                with conn.getresponse() as r:
                    bodies.append(r.read().decode())
            elif kind == 1:
                bodies.append(fetch(f"http://{host}:{port}/metrics"))
            else:
                bodies.append(fetch(f"http://{host}:{port}/metrics",
                                    {"User-Agent": "curl/7.88.1", "Accept": "*/*"}))
    finally:
        conn.close()
    return bodies


def start_postgres(bindir, work):
    data = os.path.join(work, "pg")
    os.mkdir(data, 0o700)
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(data, pw.pw_uid, pw.pw_gid)
        os.chmod(work, 0o777)  # the server's socket directory
    subprocess.run(as_postgres([os.path.join(bindir, "initdb"), "-D", data, "-U", "postgres",
                                "--auth-local=trust", "--auth-host=trust"]),
                   check=True, capture_output=True)
    with open(os.path.join(data, "pg_hba.conf"), "w") as f:
        f.write("host all exporter 127.0.0.1/32 scram-sha-256\n"
                "host all all 127.0.0.1/32 trust\n")
    # The server takes the port from a socket bound here and closed right before
    # it starts: pg_ctl cannot be handed a listener.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # A certificate for TLS (sslmode=require does not verify it).
    subprocess.run(as_postgres(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                                "-subj", "/CN=localhost", "-days", "2",
                                "-keyout", os.path.join(data, "server.key"),
                                "-out", os.path.join(data, "server.crt")]),
                   check=True, capture_output=True)
    subprocess.run(as_postgres([os.path.join(bindir, "pg_ctl"), "-D", data, "-w", "-l",
                                os.path.join(work, "pg.log"), "-o",
                                f"-p {port} -k {work} -c listen_addresses=127.0.0.1 -c ssl=on",
                                "start"]),
                   check=True, capture_output=True)
    subprocess.run([os.path.join(bindir, "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                    "-d", "postgres", "-c",
                    f"CREATE ROLE exporter LOGIN PASSWORD '{PASSWORD}' IN ROLE pg_monitor"],
                   check=True, capture_output=True)
    return data, port


def listening_port(log, proc, deadline):
    """The port the exporter logged it serves on (it binds 127.0.0.1:0)."""
    end = time.time() + deadline
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"the exporter exited with {proc.returncode}; see {log}")
        with open(log) as f:
            m = re.search(r" on http://127\.0\.0\.1:(\d+)/", f.read())
        if m:
            return int(m.group(1))
        time.sleep(0.2)
    raise RuntimeError(f"the exporter did not log its address within {deadline} s; see {log}")


def run_exporter(binary, work, name, env, up):
    """Runs the exporter under callgrind through one deployment's life; returns the output file.
    `up`: whether its scrapes must say pg_up 1 (or 0)."""
    out = os.path.join(work, f"callgrind.{name}")
    log = os.path.join(work, f"valgrind.{name}.log")
    with open(log, "w") as stderr:
        proc = subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--dump-instr=yes", "--compress-pos=no",
             "--compress-strings=no", f"--callgrind-out-file={out}", binary, "postgres-exporter",
             "--web.listen-address", "127.0.0.1:0"],
            env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        port = listening_port(log, proc, 120)
        base = f"http://127.0.0.1:{port}"
        wait_for(f"{base}/ready", proc, 120)
        fetch(f"{base}/")
        fetch(f"{base}/live")
        want = f"pg_up {int(up)}"
        for body in scrapes("127.0.0.1", port, SCRAPES):
            if want not in body.splitlines():
                raise RuntimeError(f"{name}: a scrape did not say {want}; see {log}")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return out


def executed(callgrind_out, binary):
    """Instruction addresses, and call targets, in a callgrind file written with
    --dump-instr=yes --compress-pos=no --compress-strings=no: (addresses in the
    binary's own terms, addresses where valgrind ran them, call targets where
    valgrind ran them). Callgrind gives an address in the object's own terms
    where it knows the object (`ob=BINARY`), and as it ran where not (`ob=???`)."""
    own, loaded, targets = set(), set(), set()
    ob = cob = None
    binary = os.path.realpath(binary)
    with open(callgrind_out) as f:
        for line in f:
            if line.startswith("0x"):
                (own if ob == binary else loaded).add(int(line.split(None, 1)[0], 16))
            elif line.startswith("ob="):
                ob = os.path.realpath(line[3:].strip())
            elif line.startswith("cob="):
                cob = os.path.realpath(line[4:].strip())
            elif line.startswith("calls="):
                m = re.match(r"calls=\d+ 0x([0-9a-f]+)", line)
                if m and (cob or ob) != binary:
                    targets.add(int(m.group(1), 16))
                cob = None
            elif line.startswith("fn="):
                cob = None
    return own, loaded, targets


def load_bias(targets, starts):
    """Where valgrind loaded the static PIE: the page-aligned offset that puts the
    most call targets on the start of a section (a function)."""
    counts = {}
    for t in sorted(targets)[::max(1, len(targets) // 300)]:
        for s in starts:
            d = t - s
            if d % 4096 == 0:
                counts[d] = counts.get(d, 0) + 1
    if not counts:
        return None
    bias = max(counts, key=counts.get)
    known = set(starts)
    return bias if sum(1 for t in targets if t - bias in known) >= len(targets) // 2 else None


def input_sections(map_file):
    """(start, end, section, file) of every code input section the linker placed, from its map."""
    out = []
    pending = None
    in_layout = False
    with open(map_file) as f:
        for line in f:
            if line.startswith("Linker script and memory map"):
                in_layout = True
                continue
            if not in_layout:
                continue
            m = re.match(r"^ (\.text\S*)(?:\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+(.*))?$", line)
            if m:
                if m.group(2):
                    out.append((int(m.group(2), 16), int(m.group(3), 16), m.group(1), m.group(4).strip()))
                    pending = None
                else:
                    pending = m.group(1)
                continue
            if pending:
                m = re.match(r"^\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+(.*)$", line)
                if m:
                    out.append((int(m.group(1), 16), int(m.group(2), 16), pending, m.group(3).strip()))
                pending = None
    return sorted((start, start + size, name, obj) for start, size, name, obj in out if size)


# Small C objects that run before callgrind sees the program (musl's start-up)
# or that run by allocation pattern (mimalloc): taken whole, before the rest.
WHOLE = ["*rcrt1.o(.text .text.*)", "*crt1.o(.text .text.*)", "*libc.a:*(.text .text.*)",
         "*mimalloc*:*(.text .text.*)"]


# Code a real run may need that the callgrind runs may not show, matched
# against each section's name and object in the map, with the rank of the
# run that needs it (each found with `perf record -e page-faults -d` on a
# native run):
# - sha2's SHA-NI compression, which SCRAM-SHA-256's key derivation runs on
#   CPUs that have it; valgrind emulates neither SHA-NI, ADX nor AVX-512;
# - core's Dragon4 float formatting and its bignums, the fallback for the
#   values Grisu cannot format (which values a scrape reports varies);
# - all of ring (TLS), whose assembly picks its code by CPU (ADX curve25519,
#   AES-GCM with AVX2 or AVX-512): 0.26 MB, placed with the TLS run's code.
ALSO = [(r"4sha26sha2567x86_sha", 0), (r"4core3num7flt2dec8strategy6dragon", 0),
        (r"4core3num6bignum", 0), (r"/libring-[0-9a-f]+\.rlib\(", 2)]


def whole(obj):
    name = obj.rsplit("/", 1)[-1]
    return name.endswith("crt1.o") or name.startswith("libc.a(") or "mimalloc" in name


def pattern(section, obj):
    """The linker-script input description for one section."""
    if section == ".text":
        # Members of an archive without per-function sections (ring's
        # assembly): named without the hashes cargo and cc put in file names.
        m = re.match(r"^.*/([^/(]+)\(([^)]+)\)$", obj)
        if not m:
            return None
        archive = re.sub(r"-[0-9a-f]{16}\.rlib$", "-*.rlib", m.group(1))
        member = re.sub(r"^[0-9a-f]{16}-", "*", m.group(2))
        return f"*{archive}:{member}(.text)"
    return f"*({section})"


def without_hash(section):
    """A wildcard for the same function under other symbol hashes, or None."""
    name = section
    name = re.sub(r"\.(llvm\.)?\d+$", "", name)
    if re.search(r"17h[0-9a-f]{16}E$", name):
        return re.sub(r"17h[0-9a-f]{16}E$", "17h*", name)
    if name.startswith(".text._R"):
        # v0: crate hashes, and back-references (byte offsets into the name,
        # which move when a hash's length does).
        generic = re.sub(r"B[0-9a-zA-Z]*_", "*", re.sub(r"Cs[0-9a-zA-Z]+_", "*", name))
        generic = re.sub(r"\*+", "*", generic)
        return generic + "*" if generic != name else None
    return None


def main():
    binary, map_file, bindir, work, output = sys.argv[1:6]
    sections = input_sections(map_file)
    if not sections:
        sys.exit(f"hot-text: {map_file} lists no code sections: it must be a GNU ld map")
    data, port = start_postgres(bindir, work)
    try:
        # A port that refuses: bound, never listening, held for the run.
        refusing = socket.socket()
        refusing.bind(("127.0.0.1", 0))
        closed = refusing.getsockname()[1]
        scram = {"DATA_SOURCE_USER": "exporter", "DATA_SOURCE_PASS": PASSWORD}
        # (name, environment, pg_up, rank): sections are placed by the lowest
        # rank of the runs that ran them, so what every deployment runs stays
        # together, then what failures run, then what TLS runs.
        runs = [
            ("scram", {**scram, "DATA_SOURCE_URI": f"127.0.0.1:{port}/postgres?sslmode=disable"},
             True, 0),
            ("trust", {"DATA_SOURCE_NAME":
                       f"postgresql://postgres@127.0.0.1:{port}/postgres?sslmode=disable"}, True, 0),
            ("down", {"DATA_SOURCE_NAME":
                      f"postgresql://postgres@127.0.0.1:{closed}/postgres?sslmode=disable"}, False, 1),
            ("wrong-password", {**scram, "DATA_SOURCE_PASS": "not-" + PASSWORD,
                                "DATA_SOURCE_URI": f"127.0.0.1:{port}/postgres?sslmode=disable"},
             False, 1),
            ("tls", {**scram, "DATA_SOURCE_URI": f"127.0.0.1:{port}/postgres?sslmode=require"},
             True, 2),
        ]
        results = []
        for name, env, up, rank in runs:
            results.append((rank, *executed(run_exporter(binary, work, name, env, up), binary)))
        refusing.close()
    finally:
        subprocess.run(as_postgres([os.path.join(bindir, "pg_ctl"), "-D", data, "-m", "immediate",
                                    "stop"]), capture_output=True)
    starts = [s[0] for s in sections]
    bias = 0
    if any(loaded for _, _, loaded, _ in results):
        bias = load_bias(set().union(*(t for _, _, _, t in results)), starts)
        if bias is None:
            sys.exit("hot-text: the calls callgrind saw do not land on the map's functions: "
                     "is the map the binary's?")
    hot = {}  # (section, object) -> (rank, size)
    for rank, own, loaded, _ in results:
        for a in own | {x - bias for x in loaded}:
            i = bisect.bisect_right(starts, a) - 1
            if i >= 0 and a < sections[i][1]:
                start, end, name, obj = sections[i]
                old = hot.get((name, obj), (rank, 0))[0]
                hot[(name, obj)] = (min(old, rank), end - start)
    for start, end, name, obj in sections:
        for also, rank in ALSO:
            if re.search(also, f"{name} {obj}"):
                old = hot.get((name, obj), (rank, 0))[0]
                hot[(name, obj)] = (min(old, rank), end - start)
    exact, generic = list(WHOLE), []
    for (name, obj) in sorted(hot, key=lambda k: (hot[k][0], k)):
        if whole(obj):
            continue
        p = pattern(name, obj)
        if p and p not in exact:
            exact.append(p)
        g = without_hash(name)
        if g and f"*({g})" not in generic:
            generic.append(f"*({g})")
    total = sum(size for _, size in hot.values())
    with open(output, "w") as f:
        f.write(f"""/* Generated by scripts/hot-text; do not edit. The code sections that
   `sidecar postgres-exporter` ran or needs ({len(hot)} sections, {total // 1024} KiB of {sum(e - s for s, e, _, _ in sections) // 1024} KiB),
   placed together before the rest of the code (crates/sidecar/build.rs says
   why): what every deployment runs, then failures, then TLS. First by exact
   name, then by name without the symbol hash, which still finds most of
   them in a build with other hashes. */
SECTIONS
{{
  .text.hot :
  {{
""")
        for p in exact + generic:
            f.write(f"    {p}\n")
        f.write("  }\n}\nINSERT BEFORE .text;\n")
    print(f"hot-text: {len(hot)} sections ({total // 1024} KiB) ran; wrote {output}")


if __name__ == "__main__":
    main()
