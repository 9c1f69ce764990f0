"""The echo benchmark (`make bench`): small messages, many connections, ping-pong.

Lessons 01 (level-triggered) and 02 (edge-triggered) beside an asyncio Protocol echo server
on asyncio's event loop and on uvloop's, in one run, under the same load: 64-byte messages on
50 connections, each waiting for its echo before it sends the next (a closed loop: a server
cannot win by batching what nobody waits for).

Two load generators, both in C but built differently (echo_load.c: epoll, one recv per
event; echo_poll.c: poll, every echo checked byte for byte), measure every server, and both
figures are printed: a figure that depends on the tool shows itself. Rounds alternate between
servers and between generators; each figure is the median of its rounds, printed with the
lowest and the highest, and the ratios to asyncio are taken round by round.

    .venv/bench/bin/python tools/bench/echo_bench.py [--rounds 5] [--seconds 2] [--no-pin]

This is a benchmark, not a test: it prints numbers and asserts nothing about them. The numbers
depend on the machine, and on whatever else it is doing (the load average is printed).
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
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
BASE = "asyncio"  # the ratios are to this one
GENERATORS = ["echo_load", "echo_poll"]  # tools/bench/NAME.c, same arguments, same output
AGREE = 0.25  # two generators' medians further apart than this: not a figure to trust
GENERATOR_LIMIT = 0.9  # a generator using this share of its core or more may be what limits
WARM_UP = 0.3  # seconds of each generator against each server before anything is counted


def build(folder):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        sys.exit("echo_bench: error: no C compiler (cc or gcc) to build the load generators; "
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


def plural(n, word):
    return f"{n} {word}" + ("" if n == 1 else "s")


def loadavg():
    return Path("/proc/loadavg").read_text().split()[0]


def pin(servers):
    """The servers on the first CPU, the load generators on the last (unless --no-pin).

    Where each process runs changes the figure. On a 2-core machine, 1 s runs alternating
    between placements gave these medians, in messages/s:
                                          one core each  scheduler's choice  one core for both
        lesson 01, busy (load average 8)       28k              36k                50k
        lesson 01, idle but for the bench     150k             155k                88k
        asyncio,   idle but for the bench     168k             169k                85k
    On the idle machine sharing one core halved the figure: it charges each generator's own
    cost to the server. Between one core each and the scheduler's choice, full runs on the
    idle machine gave medians within 10% of each other (uvloop's excepted: up to 22% higher
    left to the scheduler), but left to the scheduler every figure spread wider: +-14-25%
    against +-3-18% pinned. So by default each server has a core of its own and the generators the other. On a busy
    machine a pinned process waits whenever another program runs on its core, even while
    the other core is idle: there --no-pin may measure more. Returns (server CPU, generator
    CPU), or None when there are fewer than two CPUs."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    for server in servers:
        os.sched_setaffinity(server.pid, {cpus[0]})  # each server is one thread
    os.sched_setaffinity(0, {cpus[-1]})  # inherited by every generator started from here
    return cpus[0], cpus[-1]


def measure(binary, server, args, seconds):
    """One run of one load generator against one server: messages per second, and the share
    of one core that the server (over the whole run) and the generator (while it counted)
    used."""
    before = server.cpu_seconds()
    started = time.monotonic()
    try:
        result = subprocess.run(
            [str(binary), str(server.port), str(args.connections), str(args.size), str(seconds)],
            capture_output=True, text=True, timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"echo_bench: error: {binary.name} against {server.script.name} did "
                         f"not finish within {seconds + 30:g} s") from None
    wall = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"echo_bench: error: {binary.name} against {server.script.name}: "
                         f"{result.stderr.strip()}")
    if not server.alive():
        raise SystemExit(f"echo_bench: error: {server.script.name} died:\n{server.output()}")
    fields = result.stdout.split()
    messages, elapsed, cpu = int(fields[1]), float(fields[3]), float(fields[5])
    return messages / elapsed, (server.cpu_seconds() - before) / wall, cpu / elapsed


def spread(values):
    """The median, the lowest, the highest, and how far the farthest value lies from the
    median as a share of it (every value is within +- that share of the median)."""
    mid = statistics.median(values)
    off = max(mid - min(values), max(values) - mid) / mid if mid else 0.0
    return mid, min(values), max(values), off


def run(args):
    """Every round measures every server with both generators; the order of the generators
    alternates from round to round. Returns {(server, generator): [(rate, server CPU,
    generator CPU), one per round]}."""
    results = {(name, gen): [] for name, *_ in SERVERS for gen in GENERATORS}
    with tempfile.TemporaryDirectory(prefix="echo-bench-") as tmp, ExitStack() as stack:
        binaries = build(tmp)
        servers = {name: stack.enter_context(harness.start(*server_args))
                   for name, _, server_args in SERVERS}
        cores = None if args.no_pin else pin(servers.values())
        print(f"servers on CPU {cores[0]}, load generators on CPU {cores[1]}" if cores else
              "not pinned: the scheduler places the servers and the load generators")
        # The warm-up matters most for asyncio: its transport reads with recv(256 KiB), and
        # glibc's malloc first serves a block that large (over its 128 KiB threshold) with
        # mmap. So each read of this fresh asyncio server costs an mmap, an mremap (shrinking
        # the block to the 64 bytes that came) and a munmap, as strace -c shows. The first
        # read that meets an EOF frees a whole 256 KiB block instead; glibc then raises its
        # threshold and serves every later read from its heap, three system calls fewer.
        # (Any large block freed does it: whether a process starts fast or slow depends on
        # its history.) Measured here, a fresh asyncio server ran at 30-40k messages/s and
        # the same server, after one run's connections had closed, at 130-170k. This benchmark
        # once started a fresh server for each round and counted before any connection had
        # closed: it measured asyncio at a third of its speed (a second run by hand against
        # the same server did not). A server in service
        # has seen many connections close; so every server here first serves a short run of
        # each generator, whose connections then close, before any round is counted.
        for server in servers.values():
            for gen in GENERATORS:
                measure(binaries[gen], server, args, WARM_UP)
        for round_number in range(1, args.rounds + 1):
            order = GENERATORS if round_number % 2 else GENERATORS[::-1]
            for name, *_ in SERVERS:
                for gen in order:
                    results[name, gen].append(
                        measure(binaries[gen], servers[name], args, args.seconds))
            print(f"  round {round_number} of {args.rounds} done, load average {loadavg()}",
                  flush=True)
    return results


def report(results, args):
    rates = {key: [rate for rate, _, _ in runs] for key, runs in results.items()}
    per_cpu = {key: [rate / s if s > 0 else 0.0 for rate, s, _ in runs]
               for key, runs in results.items()}
    rounds = plural(args.rounds, "round")
    print(f"""
messages/s: the median of {rounds}, the lowest and the highest, and how far the
farthest round lay from the median. Per CPU-s: messages per second of the server's CPU time,
the median of the rounds and how far the farthest lay (close to messages/s when the server
is what limits; steadier on a busy machine). CPU: the share of one core used by the server /
by the load generator.""")
    print(f"{'server':<11}{'generator':<11}{'messages/s':>11}{'lowest-highest':>20}"
          f"{'within':>8}{'per CPU-s':>11}{'within':>8}{'CPU':>13}")
    limited = False
    for name, *_ in SERVERS:
        medians, efficiency_medians = [], []
        for i, gen in enumerate(GENERATORS):
            mid, lo, hi, off = spread(rates[name, gen])
            medians.append(mid)
            server_cpu = statistics.median(s for _, s, _ in results[name, gen])
            load_cpu = statistics.median(g for _, _, g in results[name, gen])
            efficiency, _, _, efficiency_off = spread(per_cpu[name, gen])
            efficiency_medians.append(efficiency)
            busy = load_cpu >= GENERATOR_LIMIT
            limited = limited or busy
            print(f"{name if i == 0 else '':<11}{gen:<11}{mid:>11,.0f}"
                  f"{f'{lo:,.0f}-{hi:,.0f}':>20}{f'+-{off:.0%}':>8}{efficiency:>11,.0f}"
                  f"{f'+-{efficiency_off:.0%}':>8}"
                  f"{f'{server_cpu:.0%} / {load_cpu:.0%}':>13}" + (" *" if busy else ""))
        gap, efficiency_gap = (max(m) / min(m) - 1 if min(m) else float("inf")
                               for m in (medians, efficiency_medians))
        print(f"{'':<11}the two generators lie {gap:.0%} apart (per CPU-s: "
              f"{efficiency_gap:.0%})"
              + (f": more than {AGREE:.0%}, not a figure to trust" if gap > AGREE else ""))

    if limited:
        print(f"* the load generator used {GENERATOR_LIMIT:.0%} or more of its core: it was near "
              f"its own limit, and the\n  server may be faster than this figure.")
    print(f"\nratio to {BASE}: each round's figure over {BASE}'s in the same round, by the "
          f"same generator;\nthe median of the rounds (lowest-highest)")
    print(f"{'':<11}{'messages/s':^40}{'per server CPU-second':^40}".rstrip())
    print(f"{'server':<11}" + "".join(f"{gen:>20}" for gen in GENERATORS * 2))
    for name, *_ in SERVERS:
        if name == BASE:
            continue
        cells = []
        for figures in (rates, per_cpu):
            for gen in GENERATORS:
                ratios = [a / b for a, b in zip(figures[name, gen], figures[BASE, gen]) if b]
                if not ratios:  # asyncio completed nothing: no ratio to give
                    cells.append("-")
                    continue
                mid, lo, hi, _ = spread(ratios)
                cells.append(f"{mid:.2f}x ({lo:.2f}-{hi:.2f})")
        print(f"{name:<11}" + "".join(f"{cell:>20}" for cell in cells))
    print(f"\nload average {loadavg()} at the end. These figures belong to this machine as it "
          f"was during the run;\na busy machine lowers them and widens their spread.")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--size", type=int, default=64, help="bytes per message (24 or more)")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of one measurement")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-pin", action="store_true",
                        help="leave the servers and the load generators to the scheduler "
                             "(by default: servers on the first CPU, generators on the last)")
    args = parser.parse_args()
    if not (1 <= args.connections <= 10000 and 24 <= args.size <= 65536
            and 0 < args.seconds <= 60 and 1 <= args.rounds <= 100):
        parser.error("--connections 1 to 10000, --size 24 to 65536, --seconds up to 60, "
                     "--rounds 1 to 100")
    print(f"echo benchmark: {args.size}-byte messages, {args.connections} connections, one "
          f"message in flight on each;\n{plural(args.rounds, 'round')} of {args.seconds:g} s "
          f"per server and load generator ({' and '.join(GENERATORS)})\nservers: "
          + ",\n         ".join(f"{name} ({what})" for name, what, _ in SERVERS)
          + f"\nload average {loadavg()} at the start", flush=True)
    try:
        results = run(args)
    except KeyboardInterrupt:  # every server has been stopped on the way out
        sys.exit("echo_bench: interrupted")
    report(results, args)


if __name__ == "__main__":
    main()
