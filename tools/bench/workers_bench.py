"""The workers benchmark: lesson 08 in one thread, several threads, one or several processes.

The same load as the echo benchmark (tools/bench/echo_bench.py, whose C load generator
echo_load.c it builds and drives): 64-byte messages on 50 connections, each waiting for its
echo before it sends the next. Two kinds of work per message:

- none: the echo loop itself, nearly all Python code. CPython runs Python code in one thread
  at a time (the global interpreter lock), so threads share one core's worth of it, whatever
  the number of cores; processes each have an interpreter of their own.
- waiting: --work-ms 1, a millisecond of waiting (a sleep, as a call to a database would)
  per message. A thread that waits lets go of the lock, so here threads do overlap.

Every figure is the median of its rounds, printed with the lowest and the highest, with the
share of a core the server used (all its threads, or its parent and all its workers) and the
generator's. The servers and the generator are left to the scheduler: a server of several
processes is meant to use several cores.

    .venv/bin/python tools/bench/workers_bench.py [--rounds 3] [--seconds 2]

A benchmark, not a test: it prints numbers and asserts nothing about them. On a machine with
two cores the generator takes a share of them too, and whatever else runs takes the rest
(the load average is printed).
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent / "notebooks"))
sys.path.insert(0, str(HERE))

import harness  # noqa: E402
from echo_bench import build, loadavg, spread  # noqa: E402  one home for these

LESSON = "08_workers.py"
# (name, the lesson's flags, how many worker processes it starts: 0 for none)
SERVERS = [
    ("1 thread", [], 0),
    ("2 threads", ["--threads", "2"], 0),
    ("2 threads, oneshot", ["--threads", "2", "--oneshot"], 0),
    ("1 worker", ["--processes", "1"], 1),
    ("2 workers, exclusive", ["--processes", "2", "--exclusive"], 2),
    ("2 workers, reuseport", ["--processes", "2", "--reuseport"], 2),
]
WAITING = [  # --work-ms 1: each 64-byte message counts as one KiB of work, 1 ms of waiting
    ("1 thread", ["--work-ms", "1"], 0),
    ("4 threads", ["--threads", "4", "--work-ms", "1"], 0),
    ("4 workers", ["--processes", "4", "--reuseport", "--work-ms", "1"], 4),
]
GENERATOR = "echo_load"
WARM_UP = 0.3  # seconds against each server before anything is counted (see echo_bench.py)


def cpu_seconds(pids):
    """User plus system CPU time of these processes, every thread of each included."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def measure(binary, server, pids, args, seconds):
    """One run: (messages per second, the server's share of a core, the generator's)."""
    before = cpu_seconds(pids)
    started = time.monotonic()
    try:
        result = subprocess.run(
            [str(binary), str(server.port), str(args.connections), str(args.size), str(seconds)],
            capture_output=True, text=True, timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"workers_bench: error: {binary.name} against {' '.join(server.args)} "
                         f"did not finish within {seconds + 30:g} s") from None
    wall = time.monotonic() - started
    if result.returncode != 0 or not server.alive():
        raise SystemExit(f"workers_bench: error: {' '.join(server.args)}: "
                         f"{result.stderr.strip()}\n{server.output()}")
    fields = result.stdout.split()
    messages, elapsed, cpu = int(fields[1]), float(fields[3]), float(fields[5])
    return messages / elapsed, (cpu_seconds(pids) - before) / wall, cpu / elapsed


def run(table, binary, args):
    """{name: [(rate, server CPU, generator CPU) per round]} for one table of servers."""
    results = {name: [] for name, _, _ in table}
    with ExitStack() as stack:
        servers = {}
        for name, flags, workers in table:
            server = stack.enter_context(harness.start(LESSON, *flags))
            pids = [server.pid]
            if workers:
                pids += harness.worker_pids(server, workers).values()
            servers[name] = (server, pids)
            measure(binary, server, pids, args, WARM_UP)
        for round_number in range(1, args.rounds + 1):
            for name, _, _ in table:
                results[name].append(measure(binary, *servers[name], args, args.seconds))
            print(f"  round {round_number} of {args.rounds} done, load average {loadavg()}",
                  flush=True)
    return results


def report(title, results, base):
    print(f"\n{title}")
    print(f"{'server':<22}{'messages/s':>11}{'lowest-highest':>20}{'within':>8}"
          f"{'CPU':>13}{f'x {base}':>12}")
    base_rate = statistics.median(rate for rate, _, _ in results[base])
    for name, runs in results.items():
        mid, lo, hi, off = spread([rate for rate, _, _ in runs])
        server_cpu = statistics.median(s for _, s, _ in runs)
        load_cpu = statistics.median(g for _, _, g in runs)
        print(f"{name:<22}{mid:>11,.0f}{f'{lo:,.0f}-{hi:,.0f}':>20}{f'+-{off:.0%}':>8}"
              f"{f'{server_cpu:.0%} / {load_cpu:.0%}':>13}{mid / base_rate:>11.2f}x")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds per server (default 3)")
    parser.add_argument("--seconds", type=float, default=2.0,
                        help="seconds counted per round (default 2)")
    parser.add_argument("--connections", type=int, default=50, help="default 50")
    parser.add_argument("--size", type=int, default=64, help="bytes per message (default 64)")
    args = parser.parse_args()
    if args.rounds < 1 or args.seconds <= 0 or args.connections < 1 or args.size < 1:
        parser.error("--rounds, --seconds, --connections and --size must be positive")
    print(f"lesson 08, {args.connections} connections, {args.size}-byte messages, "
          f"{args.rounds} rounds of {args.seconds:g} s, {os.cpu_count()} CPUs, "
          f"load average {loadavg()}")
    with tempfile.TemporaryDirectory(prefix="workers-bench-") as tmp:
        binary = build(tmp)[GENERATOR]
        print("no work per message: the echo loop alone")
        plain = run(SERVERS, binary, args)
        print("1 ms of waiting per message (--work-ms 1)")
        waiting = run(WAITING, binary, args)
    footnote = ("messages/s: the median of the rounds, the lowest and the highest, and how far "
                "the farthest lay from the median.\nCPU: the share of one core used by the "
                "server (every thread, or the parent and every worker) / by the generator.")
    print(f"\n{footnote}")
    report("No work per message: threads share one interpreter lock, processes do not",
           plain, "1 thread")
    report("1 ms of waiting per message: a waiting thread lets go of the lock", waiting,
           "1 thread")


if __name__ == "__main__":
    main()
