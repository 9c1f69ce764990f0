"""The echo benchmark (`make bench`): small messages, many connections, ping-pong.

Lessons 01 (level-triggered) and 02 (edge-triggered) beside an asyncio Protocol echo server
on asyncio's event loop and on uvloop's, in one run, under the same load: 64-byte messages on
50 connections, each waiting for its echo before it sends the next (a closed loop: a server
cannot win by batching what nobody waits for).

Two load generators, written in C and differently (echo_load.c: epoll, one recv per event;
echo_poll.c: poll, reads until EAGAIN, checks every echo byte for byte), measure every server;
both figures are printed, so a figure that depends on the tool shows itself. Rounds alternate
between servers and between generators; each figure is the median of its rounds, with the
spread (lowest to highest) beside it, and the machine's load average before and after.

    .venv/bench/bin/python tools/bench/echo_bench.py [--rounds 5] [--seconds 2]

This is a benchmark, not a test: it prints numbers and asserts nothing about them. The numbers
depend on the machine (and on whatever else it is doing).
"""

import argparse
from contextlib import ExitStack
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent / "notebooks"))

import harness  # noqa: E402

SERVERS = [
    ("lesson 01", "level-triggered epoll", ["01_lt_echo.py"]),
    ("lesson 02", "edge-triggered epoll", ["02_et_echo.py"]),
    ("asyncio", "an asyncio Protocol", [HERE / "asyncio_echo.py", "--loop", "asyncio"]),
    ("uvloop", "the same on uvloop", [HERE / "asyncio_echo.py", "--loop", "uvloop"]),
]
BASE = "asyncio"
GENERATORS = ["echo_load", "echo_poll"]
AGREE = 0.25  # two generators further apart than this: say so beside the figure


def build(folder):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        sys.exit("echo_bench: error: no C compiler (cc or gcc) for the load generators; "
                 "on Debian or Ubuntu: sudo apt-get install gcc")
    binaries = {}
    for name in GENERATORS:
        binary = Path(folder) / name
        built = subprocess.run([cc, "-O2", "-o", str(binary), str(HERE / f"{name}.c")],
                               capture_output=True, text=True)
        if built.returncode != 0:
            sys.exit(f"echo_bench: error: {cc} could not build {name}.c:\n{built.stderr.strip()}")
        binaries[name] = binary
    return binaries


def loadavg():
    return Path("/proc/loadavg").read_text().split()[0]


def measure(binary, server, args, seconds):
    """One run of one load generator against one server: messages per second, and the share
    of one CPU that the server and the generator each used while it ran."""
    before = server.cpu_seconds()
    started = time.monotonic()
    result = subprocess.run(
        [str(binary), str(server.port), str(args.connections), str(args.size), str(seconds)],
        capture_output=True, text=True, timeout=seconds + 30)
    wall = time.monotonic() - started
    if result.returncode != 0:
        raise RuntimeError(f"{binary.name} failed against {server.script.name}: "
                           f"{result.stderr.strip()}")
    if not server.alive():
        raise RuntimeError(f"{server.script.name} died:\n{server.output()}")
    fields = result.stdout.split()
    messages, elapsed, cpu = int(fields[1]), float(fields[3]), float(fields[5])
    return messages / elapsed, (server.cpu_seconds() - before) / wall, cpu / elapsed


def spread(values):
    """The median, the lowest, the highest, and how far the farthest value lies from the
    median as a share of it (every value is within +- that share of the median)."""
    mid = statistics.median(values)
    off = max(mid - min(values), max(values) - mid) / mid if mid else 0.0
    return mid, min(values), max(values), off


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--size", type=int, default=64, help="bytes per message (24 or more)")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of one measurement")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pin", choices=["none", "split", "same"], default="none")
    args = parser.parse_args()
    if args.connections < 1 or args.size < 24 or args.seconds <= 0 or args.rounds < 1:
        parser.error("--connections, --seconds and --rounds must be positive, --size at least 24")

    print(f"echo benchmark: {args.size}-byte messages, {args.connections} connections, one "
          f"message in flight on each;\n{args.rounds} rounds of {args.seconds:g} s per server "
          f"and load generator, generators {' and '.join(GENERATORS)}\nservers: "
          + ", ".join(f"{name} ({what})" for name, what, _ in SERVERS)
          + f"\nload average {loadavg()} at the start", flush=True)
    rates = {(s, g): [] for s, *_ in SERVERS for g in GENERATORS}
    server_cpu = {key: [] for key in rates}
    load_cpu = {key: [] for key in rates}
    with tempfile.TemporaryDirectory(prefix="echo-bench-") as tmp, ExitStack() as stack:
        binaries = build(tmp)
        servers = {}
        for name, _, server_args in SERVERS:
            servers[name] = stack.enter_context(harness.start(*server_args))
        cpus = sorted(os.sched_getaffinity(0))
        if args.pin != "none" and len(cpus) >= 2:
            for server in servers.values():
                os.sched_setaffinity(server.pid, {cpus[0]})
            os.sched_setaffinity(0, {cpus[-1] if args.pin == "split" else cpus[0]})
        # Warm-up. Besides the usual (code paths, caches), this matters for asyncio: its
        # transport reads with recv(256 KiB), and a 256 KiB block is more than glibc's malloc
        # first serves from its heap (128 KiB), so every read of a fresh server costs an
        # mmap, an mremap (to the 64 bytes that came) and a munmap. The first read that meets
        # an EOF frees a whole 256 KiB block; glibc then raises its threshold and serves every
        # later read from the heap, three system calls fewer. A fresh asyncio server measured
        # at once (as this benchmark once did) ran at a third of its speed; measured after any
        # connection had closed (run by hand, a second time), at full speed. A server in
        # service has seen many connections close, so every server here first serves one
        # short run of each generator, whose connections then close, before any is counted.
        for server in servers.values():
            for gen in GENERATORS:
                measure(binaries[gen], server, args, 0.3)
        for round_number in range(args.rounds):
            order = GENERATORS if round_number % 2 == 0 else GENERATORS[::-1]
            for name, *_ in SERVERS:
                for gen in order:
                    rate, scpu, lcpu = measure(binaries[gen], servers[name], args, args.seconds)
                    rates[name, gen].append(rate)
                    server_cpu[name, gen].append(scpu)
                    load_cpu[name, gen].append(lcpu)
            print(f"  round {round_number + 1} of {args.rounds} done, load average {loadavg()}",
                  flush=True)

    print(f"\nmessages per second: the median of {args.rounds} rounds, the lowest and highest, "
          f"and how far the\nfarthest round lay from the median; CPU: the share of one core "
          f"used by the server / the generator")
    print(f"{'server':<11}{'generator':<11}{'messages/s':>11}{'lowest-highest':>22}{'within':>8}"
          f"{'CPU':>13}")
    for name, what, _ in SERVERS:
        medians = []
        for i, gen in enumerate(GENERATORS):
            mid, lo, hi, off = spread(rates[name, gen])
            medians.append(mid)
            cpu = (f"{statistics.median(server_cpu[name, gen]):.0%} / "
                   f"{statistics.median(load_cpu[name, gen]):.0%}")
            print(f"{name if i == 0 else '':<11}{gen:<11}{mid:>11,.0f}"
                  f"{f'{lo:,.0f}-{hi:,.0f}':>22}{f'+-{off:.0%}':>8}{cpu:>13}")
        gap = max(medians) / min(medians) - 1 if min(medians) else float("inf")
        print(f"{'':<11}the two medians lie {gap:.0%} apart"
              + (f": more than {AGREE:.0%}, not a figure to trust (a busy machine, or a "
                 f"generator slower than the server)" if gap > AGREE else ""))

    print(f"\nratio to {BASE}: each round's figure over {BASE}'s in the same round, "
          f"median (lowest-highest)")
    print(f"{'server':<11}" + "".join(f"{gen:>22}" for gen in GENERATORS))
    for name, what, _ in SERVERS:
        if name == BASE:
            continue
        cells = []
        for gen in GENERATORS:
            mid, lo, hi, _ = spread([a / b for a, b in zip(rates[name, gen], rates[BASE, gen])])
            cells.append(f"{mid:.2f}x ({lo:.2f}-{hi:.2f})")
        print(f"{name:<11}" + "".join(f"{c:>22}" for c in cells))
    print(f"\nload average {loadavg()} at the end. The figures depend on the machine; a busy "
          f"machine lowers them\nand widens their spread. A server near 100% CPU is what "
          f"was measured.")

if __name__ == "__main__":
    main()
