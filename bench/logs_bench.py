#!/usr/bin/env python3
"""Benchmark `sidecar logs` against GNU `tail -F` and `busybox tail -F`, side by side.

Called by bench/logs.sh (which builds the release binary and installs busybox).
All tools run in the same run on the same generated data; the report gives
ratios to GNU tail, since absolute numbers on a shared machine are noisy.

1. Throughput: relay an existing file (read from its start) to /dev/null and to
   a pipe (read by `cat`). Done when the tool has written as many bytes as the
   file holds (/proc/PID/io wchar). Reports lines/s, MiB/s, CPU seconds per GiB
   and peak RSS (VmHWM).
2. Rotation: a writer appends numbered lines at full speed (and at a steady
   rate) and rotates the file (rename, copytruncate); the tool follows it by
   name. Reports lines lost and repeated, from the sequence numbers relayed.
3. Low rate ("lowrate"): this process appends numbered lines at a steady rate
   (default 1,000 and 20,000 lines/s, 20 s per tool per rate) on a clock, at
   most one write() per 1 ms tick, each line carrying its sequence number and
   its send time (time.monotonic_ns); the same loop reads the tool's stdout
   (a pipe) in big chunks. The tools take turns, each round starting with the
   next tool. Reports, median of rounds: the tool's CPU time per line
   (utime+stime from /proc/PID/stat over the window from the first line
   written to the last line read; one clock tick is 10 ms, so a 20 s window
   resolves about 0.5 us/line at 1k lines/s), new-line latency p50/p99 (write()
   to read()), lines lost and repeated; and system calls per line from a
   separate, shorter pass per tool per rate under `strace -f -c` attached after
   start-up (strace slows the tool, so it may batch more lines per read than
   when untraced). Ends with a verdict against the targets: CPU per line at
   most GNU tail's at each rate, p99 under 50 ms (and, when the throughput part
   ran, pipe throughput at least GNU tail's and busybox's).

Parts: BENCH_PARTS=throughput,rotation,lowrate (the default; any subset, e.g.
BENCH_PARTS=lowrate). BENCH_SKIP_ROTATION=1 still drops the rotation part.
Low-rate settings: BENCH_LOWRATE_RATES=1000,20000, BENCH_LOWRATE_SECONDS=20,
BENCH_STRACE_SECONDS=5 (0 skips the strace pass), BENCH_LOWRATE_TICK_MS=1;
BENCH_REPEATS is the number of rounds.
"""

import array
import os
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_io(pid):
    with open(f"/proc/{pid}/io") as f:
        return {k: int(v) for k, v in (line.split(": ") for line in f)}


def proc_cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_hwm_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def stop(p):
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def throughput_once(cmd, size, sink):
    consumer = None
    t0 = time.monotonic()
    if sink == "devnull":
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    else:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        consumer = subprocess.Popen(["cat"], stdin=p.stdout, stdout=subprocess.DEVNULL)
        p.stdout.close()
    try:
        deadline = t0 + 300
        while proc_io(p.pid)["wchar"] < size:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{cmd[0]} did not finish in 300 s")
            time.sleep(0.002)
        elapsed = time.monotonic() - t0
        cpu = proc_cpu_seconds(p.pid)
        hwm = proc_hwm_kib(p.pid)
    finally:
        stop(p)
        if consumer:
            consumer.wait()
    return elapsed, cpu, hwm


def count_lines(path):
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            n += chunk.count(b"\n")
    return n


SEQ = re.compile(rb"seq=(\d+)")


def tally(path, written):
    seen = set()
    dups = 0
    with open(path, "rb") as f:
        for line in f:
            m = SEQ.search(line)
            if not m:
                continue
            s = int(m.group(1))
            if s in seen:
                dups += 1
            seen.add(s)
    lost = sum(1 for s in range(1, written + 1) if s not in seen)
    return lost, dups


def rotation_once(cmd, sidecar, workdir, rotation, rate, lines):
    log = os.path.join(workdir, "app.log")
    out_path = os.path.join(workdir, "out.txt")
    for name in os.listdir(workdir):
        os.remove(os.path.join(workdir, name))
    with open(log, "wb"):
        pass
    with open(out_path, "wb") as out:
        p = subprocess.Popen(cmd(log), stdout=out, stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.5)  # let the follower open the file (tail has no readiness signal)
            subprocess.run(
                [sidecar, "demo-app", "--file", log, "--lines", str(lines), "--rate", str(rate),
                 "--rotate-bytes", "2MiB", "--rotation", rotation, "--backups", "1000"],
                check=True, stdout=subprocess.DEVNULL,
            )
            # Done when the output stops growing for 2 s (at most 60 s).
            last, quiet_since, deadline = -1, time.monotonic(), time.monotonic() + 60
            while time.monotonic() < deadline:
                size = os.path.getsize(out_path)
                if size != last:
                    last, quiet_since = size, time.monotonic()
                elif time.monotonic() - quiet_since > 2:
                    break
                time.sleep(0.05)
        finally:
            stop(p)
    return tally(out_path, lines)


LINE_TAIL = (b' level=info logger=app.http msg="request handled" method=GET'
             b' path=/api/v1/items status=200\n')
LINE_BYTES = 10 + 1 + 19 + len(LINE_TAIL)  # "<seq:010> <send ns:019>" + LINE_TAIL


class Received:
    """Lines read from a tool's stdout: which sequence numbers, and each
    line's latency (read time minus the send time the line carries)."""

    def __init__(self, total):
        self.seen = bytearray(total + 1)
        self.total = total
        self.lat = array.array("q")
        self.lines = 0  # numbered lines read, repeats included
        self.unique = 0
        self.dups = 0
        self.other = 0  # warm-up and unparsable lines
        self.buf = b""

    def feed(self, chunk, now):
        lines = (self.buf + chunk).split(b"\n") if self.buf else chunk.split(b"\n")
        self.buf = lines.pop()
        seen, lat = self.seen, self.lat
        for line in lines:
            try:
                s = int(line[:10])
                t = int(line[11:30])
            except ValueError:
                self.other += 1
                continue
            if not 0 < s <= self.total:
                self.other += 1
                continue
            self.lines += 1
            if seen[s]:
                self.dups += 1
            else:
                seen[s] = 1
                self.unique += 1
                lat.append(now - t)

    def pump(self, fd, timeout):
        """Waits up to `timeout` seconds for output; reads one chunk if any.
        Returns False at end of file."""
        if select.select([fd], [], [], max(timeout, 0))[0]:
            chunk = os.read(fd, 1 << 20)
            now = time.monotonic_ns()
            if not chunk:
                return False
            self.feed(chunk, now)
        return True


def traced(pid):
    """True once every thread of `pid` has a tracer (strace has attached)."""
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                if not any(l.startswith("TracerPid:") and l.split()[1] != "0" for l in f):
                    return False
    except FileNotFoundError:
        return False
    return True


def strace_summary(path):
    """Total calls and calls per system call from an `strace -c` summary."""
    calls, total = {}, 0
    with open(path) as f:
        for line in f:
            fields = line.split()
            if len(fields) < 5 or not fields[0].replace(".", "").isdigit():
                continue
            if fields[-1] == "total":
                total = int(fields[3])
            else:
                calls[fields[-1]] = int(fields[3])
    return total, calls


def lowrate_once(cmd, workdir, rate, seconds, tick_ns, strace_out=None):
    """Follows a file that this process appends numbered lines to at `rate`
    lines/s for `seconds`, reading the tool's stdout in the same loop (one
    thread, one clock: time.monotonic_ns). Returns a dict of measurements."""
    for name in os.listdir(workdir):
        os.remove(os.path.join(workdir, name))
    log = os.path.join(workdir, "app.log")
    wfd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    total = int(rate * seconds)
    rx = Received(total)
    p = subprocess.Popen(cmd(log), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    rfd = p.stdout.fileno()
    tracer = None
    try:
        # Warm-up: write sequence-0 lines until one comes out, so the window
        # starts with the tool following the file (busybox checks once a second).
        deadline = time.monotonic() + 15
        while rx.other == 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{cmd(log)[0]} relayed nothing in 15 s")
            os.write(wfd, b"%010d %019d" % (0, time.monotonic_ns()) + LINE_TAIL)
            end = time.monotonic() + 0.05
            while rx.other == 0 and time.monotonic() < end:
                rx.pump(rfd, end - time.monotonic())
        if strace_out:
            tracer = subprocess.Popen(["strace", "-f", "-c", "-o", strace_out, "-p", str(p.pid)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 10
            while not traced(p.pid):
                if time.monotonic() > deadline or tracer.poll() is not None:
                    raise RuntimeError("strace did not attach")
                time.sleep(0.01)
        # Anything still on its way from the warm-up is read and ignored.
        end = time.monotonic() + 0.1
        while time.monotonic() < end:
            rx.pump(rfd, end - time.monotonic())

        times0 = os.times()
        cpu0 = proc_cpu_seconds(p.pid)
        t0 = time.monotonic_ns()
        ns_per_line = 1e9 / rate
        written = writes = lag = 0
        wake = t0
        while written < total:
            now = time.monotonic_ns()
            if now >= wake:
                due = min(total, int((now - t0) / ns_per_line) + 1)
                if due > written:
                    sent = time.monotonic_ns()
                    tail = b" %019d" % sent + LINE_TAIL
                    os.write(wfd, b"".join([b"%010d" % s + tail
                                            for s in range(written + 1, due + 1)]))
                    # How late the batch's first line went out.
                    lag = max(lag, sent - (t0 + int(written * ns_per_line)))
                    written = due
                    writes += 1
                # Next write: when the next line is due, but at most one write
                # per tick of a fixed grid (at 20k lines/s and 1 ms ticks, 20
                # lines a write; at 1k lines/s, one line a write).
                next_tick = t0 + ((now - t0) // tick_ns + 1) * tick_ns
                wake = max(t0 + int(written * ns_per_line), next_tick)
            rx.pump(rfd, (wake - time.monotonic_ns()) / 1e9)
        t_written = time.monotonic_ns()
        # Drain: until every line is in, or nothing came for 3 s.
        last, quiet_since = rx.lines, time.monotonic()
        while rx.unique < total and time.monotonic() - quiet_since < 3:
            if not rx.pump(rfd, 0.1):
                break
            if rx.lines != last:
                last, quiet_since = rx.lines, time.monotonic()
        t_end = time.monotonic_ns()
        cpu1 = proc_cpu_seconds(p.pid)
        times1 = os.times()
        if tracer:
            tracer.send_signal(signal.SIGINT)
            tracer.wait(timeout=30)
            tracer = None
    finally:
        if tracer:
            tracer.kill()
            tracer.wait()
        stop(p)
        p.stdout.close()
        os.close(wfd)
    lat = sorted(rx.lat)

    def pct(q):
        return lat[min(len(lat) - 1, int(q * len(lat)))] / 1e6 if lat else float("nan")

    return {
        "written": total, "writes": writes, "lines": rx.lines,
        "lost": total - rx.unique, "dups": rx.dups,
        "rate": (total - 1) / ((t_written - t0) / 1e9) if t_written > t0 else 0,
        "lag": lag / 1e6,
        "cpu_us": (cpu1 - cpu0) / max(rx.lines, 1) * 1e6,
        "p50": pct(0.50), "p99": pct(0.99), "max": lat[-1] / 1e6 if lat else float("nan"),
        "bench_cpu": ((times1.user + times1.system) - (times0.user + times0.system))
                     / ((t_end - t0) / 1e9),
    }


def lowrate(sidecar, tools, tmp, repeats, pipe_ok):
    rates = [int(r) for r in os.environ.get("BENCH_LOWRATE_RATES", "1000,20000").split(",")
             if r.strip()]
    seconds = float(os.environ.get("BENCH_LOWRATE_SECONDS", "20"))
    strace_seconds = float(os.environ.get("BENCH_STRACE_SECONDS", "5"))
    tick_ns = int(float(os.environ.get("BENCH_LOWRATE_TICK_MS", "1")) * 1e6)
    work = os.path.join(tmp, "lowrate")
    os.mkdir(work)
    names = list(tools)
    have_strace = strace_seconds > 0 and shutil.which("strace") is not None
    print(f"\nLow, steady rate: one writer appends numbered {LINE_BYTES}-byte lines on a clock,\n"
          f"at most one write() per {tick_ns / 1e6:g} ms; {seconds:g} s per tool per rate, "
          f"{repeats} round(s), the tools in turns\n(median of rounds). The tool's stdout is a "
          f"pipe read by the benchmark; latency is write() to read(),\n"
          + (f"one clock. System calls: a separate {strace_seconds:g} s pass per tool per rate "
             f"under `strace -f -c`,\nattached after start-up.\n" if have_strace else
             "one clock. System calls: not measured (no strace, or BENCH_STRACE_SECONDS=0).\n"))
    results = {}  # (name, rate) -> list of per-round dicts
    syscalls = {}  # (name, rate) -> (calls per line, top calls per line)
    for rate in rates:
        for round_ in range(repeats):
            # Each round starts with the next tool, so none always runs first.
            order = names[round_ % len(names):] + names[:round_ % len(names)]
            for name in order:
                results.setdefault((name, rate), []).append(
                    lowrate_once(tools[name], work, rate, seconds, tick_ns))
        if have_strace:
            for name in names:
                out = os.path.join(tmp, "strace.txt")
                r = lowrate_once(tools[name], work, rate, strace_seconds, tick_ns, strace_out=out)
                total, calls = strace_summary(out)
                n = max(r["lines"], 1)
                top = sorted(calls.items(), key=lambda kv: -kv[1])[:5]
                syscalls[(name, rate)] = (total / n, [(c, k / n) for c, k in top])
    print("| tool | rate | CPU us/line | vs GNU tail | syscalls/line | latency p50 | p99 "
          "| lost | dup |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    med = {}
    for rate in rates:
        for name in names:
            rs = results[(name, rate)]
            med[(name, rate)] = {k: statistics.median(r[k] for r in rs)
                                 for k in ("cpu_us", "p50", "p99")}
        ref = med[("GNU tail -F", rate)]["cpu_us"]
        for name in names:
            m, rs = med[(name, rate)], results[(name, rate)]
            sc = syscalls.get((name, rate))
            print(f"| {name} | {rate:,}/s | {m['cpu_us']:.2f} "
                  f"| {m['cpu_us'] / ref if ref else float('nan'):.2f}x "
                  f"| {f'{sc[0]:.2f}' if sc else 'n/a'} | {m['p50']:.2f} ms | {m['p99']:.2f} ms "
                  f"| {sum(r['lost'] for r in rs)} | {sum(r['dups'] for r in rs)} |")
    print("\nWriter and reader, per tool and rate (all rounds): lowest rate the writer held, "
          "median writes,\nmost it fell behind its schedule; highest latency; the benchmark "
          "process's own CPU (median):")
    for rate in rates:
        for name in names:
            rs = results[(name, rate)]
            print(f"  {name} at {rate:,}/s: {min(r['rate'] for r in rs):,.0f} lines/s in "
                  f"{statistics.median(r['writes'] for r in rs):,.0f} writes, "
                  f"at most {max(r['lag'] for r in rs):.1f} ms behind; "
                  f"max latency {max(r['max'] for r in rs):.1f} ms; "
                  f"benchmark {statistics.median(r['bench_cpu'] for r in rs) * 100:.0f}% of a CPU")
    if syscalls:
        print("System calls per line, the five most frequent (strace pass):")
        for rate in rates:
            for name in names:
                total, top = syscalls[(name, rate)]
                print(f"  {name} at {rate:,}/s: {total:.2f} = "
                      + ", ".join(f"{c} {k:.2f}" for c, k in top) + ", ...")
    if repeats > 1:
        for rate in rates:
            ratios = [s["cpu_us"] / g["cpu_us"] if g["cpu_us"] else float("nan")
                      for s, g in zip(results[("sidecar logs", rate)],
                                      results[("GNU tail -F", rate)])]
            print(f"per round, sidecar / GNU tail CPU per line at {rate:,}/s: "
                  + " ".join(f"{x:.2f}x" for x in ratios)
                  + f" ({sum(x <= 1 for x in ratios)} of {len(ratios)} at most GNU tail's)")
    cpu_parts, cpu_met = [], True
    for rate in rates:
        x = med[("sidecar logs", rate)]["cpu_us"] / med[("GNU tail -F", rate)]["cpu_us"]
        cpu_met &= x <= 1
        cpu_parts.append(f"{x:.2f}x at {rate:,}/s")
    p99s = [med[("sidecar logs", rate)]["p99"] for rate in rates]
    p99_met = all(p < 50 for p in p99s)
    verdict = (f"\nverdict (sidecar logs): CPU per line {', '.join(cpu_parts)} of GNU tail's "
               f"(target at most 1.00x): {'met' if cpu_met else 'NOT met'}; p99 "
               + ", ".join(f"{p:.1f} ms at {r:,}/s" for p, r in zip(p99s, rates))
               + f" (target under 50 ms): {'met' if p99_met else 'NOT met'}")
    if pipe_ok is not None:
        verdict += (f"; pipe throughput ({pipe_ok[1]:,}-line file) at least GNU tail's and "
                    f"busybox's: {'met' if pipe_ok[0] else 'NOT met'}")
    print(verdict)


def main():
    sidecar = sys.argv[1]
    sys.stdout.reconfigure(line_buffering=True)  # progress shows through a pipe (tee)
    lines = int(os.environ.get("BENCH_LINES", "2000000"))
    rot_lines = int(os.environ.get("BENCH_ROTATION_LINES", "200000"))
    repeats = int(os.environ.get("BENCH_REPEATS", "3"))
    parts = {p.strip() for p in
             os.environ.get("BENCH_PARTS", "throughput,rotation,lowrate").split(",")}
    if os.environ.get("BENCH_SKIP_ROTATION"):
        parts.discard("rotation")
    unknown = parts - {"throughput", "rotation", "lowrate"}
    if unknown:
        sys.exit(f"BENCH_PARTS: unknown part(s) {', '.join(sorted(unknown))} "
                 f"(throughput, rotation, lowrate)")
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    tools = {
        "sidecar logs": lambda path: [sidecar, "logs", "--admin-addr", "off", path],
        "GNU tail -F": lambda path: ["tail", "-n", "+1", "-F", path],
        "busybox tail -F": lambda path: ["busybox", "tail", "-n", "+1", "-F", path],
    }
    pipe_ok = None
    with tempfile.TemporaryDirectory(dir=base) as tmp:
        if "throughput" in parts:
            data = os.path.join(tmp, "data.log")
            subprocess.run([sidecar, "demo-app", "--file", data, "--lines", str(lines),
                            "--rotate-bytes", "1000GiB"], check=True, stdout=subprocess.DEVNULL)
            size = os.path.getsize(data)
            nlines = count_lines(data)
            print(f"data: {nlines} lines, {size / 2**20:.1f} MiB ({size / nlines:.0f} bytes/line), "
                  f"in {'tmpfs' if base else 'a temp dir'}; median of {repeats} runs\n")
            print("| tool | sink | lines/s | MiB/s | vs GNU tail | CPU s/GiB | peak RSS |")
            print("|---|---|---:|---:|---:|---:|---:|")
            for sink in ("devnull", "pipe"):
                results = {}
                for name, cmd in tools.items():
                    runs = [throughput_once(cmd(data), size, sink) for _ in range(repeats)]
                    elapsed = statistics.median(r[0] for r in runs)
                    cpu = statistics.median(r[1] for r in runs)
                    hwm = max(r[2] for r in runs)
                    results[name] = (elapsed, cpu, hwm)
                ref = results["GNU tail -F"][0]
                for name, (elapsed, cpu, hwm) in results.items():
                    print(f"| {name} | {'/dev/null' if sink == 'devnull' else 'pipe to cat'} "
                          f"| {nlines / elapsed:,.0f} | {size / 2**20 / elapsed:,.0f} "
                          f"| {ref / elapsed:.2f}x | {cpu / (size / 2**30):.2f} "
                          f"| {hwm / 1024:.1f} MiB |")
                if sink == "pipe":
                    pipe_ok = (all(results["sidecar logs"][0] <= results[n][0]
                                   for n in ("GNU tail -F", "busybox tail -F")), nlines)
            os.remove(data)

        if "rotation" in parts:
            work = os.path.join(tmp, "rot")
            os.mkdir(work)
            print(f"\nRotation every 2 MiB while writing {rot_lines} numbered lines:\n")
            print("| tool | rotation | write rate | lines lost | lines repeated |")
            print("|---|---|---|---:|---:|")
            for rotation, rate in (("rename", 0), ("copytruncate", 0), ("rename", 20000),
                                   ("copytruncate", 20000)):
                for name, cmd in tools.items():
                    lost, dups = rotation_once(cmd, sidecar, work, rotation, rate, rot_lines)
                    rate_text = "full speed" if rate == 0 else f"{rate}/s"
                    print(f"| {name} | {rotation} | {rate_text} | {lost} | {dups} |")

        if "lowrate" in parts:
            lowrate(sidecar, tools, tmp, repeats, pipe_ok)


if __name__ == "__main__":
    # Stopped from outside, the run still stops what it started (its
    # `finally`), instead of leaving servers and load running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    main()
