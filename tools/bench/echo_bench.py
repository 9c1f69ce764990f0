"""The echo benchmark (`make bench`): small messages, many connections, ping-pong.

Lessons 01 (level-triggered) and 02 (edge-triggered) against an asyncio Protocol echo server
on asyncio's loop and on uvloop's, in one run, under the same load: 64-byte messages on 50
connections, each waiting for its echo before it sends the next. The load comes from a small
C program (echo_load.c, compiled here), so that it is never the bottleneck: each server is
pinned to one CPU and the load generator to the other, and the load generator's own CPU use
is printed beside each result. Rounds alternate between servers; the median is reported.

This is a benchmark, not a test: it prints numbers and asserts nothing about them.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent / "notebooks"))

import harness  # noqa: E402

SERVERS = [
    ("lesson 01, level-triggered", ["01_lt_echo.py"]),
    ("lesson 02, edge-triggered", ["02_et_echo.py"]),
    ("asyncio Protocol", [HERE / "asyncio_echo.py", "--loop", "asyncio"]),
    ("uvloop Protocol", [HERE / "asyncio_echo.py", "--loop", "uvloop"]),
]


def build_load_generator(folder):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        sys.exit("make bench needs a C compiler for its load generator (apt-get install gcc)")
    binary = Path(folder) / "echo_load"
    subprocess.run([cc, "-O2", "-o", str(binary), str(HERE / "echo_load.c")], check=True)
    return binary


def one_round(load, server_args, connections, size, seconds):
    with harness.start(*server_args) as server:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) >= 2:
            os.sched_setaffinity(server.pid, {cpus[0]})
        pin = ["taskset", "-c", str(cpus[-1])] if len(cpus) >= 2 and shutil.which("taskset") else []
        result = subprocess.run(
            [*pin, str(load), str(server.port), str(connections), str(size), str(seconds)],
            capture_output=True, text=True, timeout=seconds + 30)
        if result.returncode != 0:
            raise RuntimeError(f"load generator failed: {result.stderr.strip()}")
        fields = result.stdout.split()
        messages, elapsed, cpu = int(fields[1]), float(fields[3]), float(fields[5])
        if not server.alive():
            raise RuntimeError(f"server died:\n{server.output()}")
    return messages / elapsed, cpu / elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"echo benchmark: {args.size}-byte messages, {args.connections} connections, "
          f"ping-pong, {args.rounds} rounds of {args.seconds:g} s per server (median shown)")
    with tempfile.TemporaryDirectory() as tmp:
        load = build_load_generator(tmp)
        rates = {name: [] for name, _ in SERVERS}
        load_cpu = {name: [] for name, _ in SERVERS}
        for _ in range(args.rounds):
            for name, server_args in SERVERS:
                rate, cpu = one_round(load, server_args, args.connections, args.size, args.seconds)
                rates[name].append(rate)
                load_cpu[name].append(cpu)
    base = statistics.median(rates["asyncio Protocol"])
    print(f"\n{'server':<28}{'messages/s':>12}{'vs asyncio':>12}{'load generator CPU':>20}")
    for name, _ in SERVERS:
        rate = statistics.median(rates[name])
        print(f"{name:<28}{rate:>12,.0f}{rate / base:>11.2f}x"
              f"{statistics.median(load_cpu[name]):>19.0%}")
    print("\nA load generator well under 100% CPU was waiting on the server: the server is what "
          "was measured.")


if __name__ == "__main__":
    main()
