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
"""

import os
import re
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


def main():
    sidecar = sys.argv[1]
    lines = int(os.environ.get("BENCH_LINES", "2000000"))
    rot_lines = int(os.environ.get("BENCH_ROTATION_LINES", "200000"))
    repeats = int(os.environ.get("BENCH_REPEATS", "3"))
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    tools = {
        "sidecar logs": lambda path: [sidecar, "logs", "--admin-addr", "off", path],
        "GNU tail -F": lambda path: ["tail", "-n", "+1", "-F", path],
        "busybox tail -F": lambda path: ["busybox", "tail", "-n", "+1", "-F", path],
    }
    with tempfile.TemporaryDirectory(dir=base) as tmp:
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

        if os.environ.get("BENCH_SKIP_ROTATION"):
            return
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


if __name__ == "__main__":
    # Stopped from outside, the run still stops what it started (its
    # `finally`), instead of leaving servers and load running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    main()
