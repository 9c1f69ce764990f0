"""Lesson 11's goals (`make bench`): the fastest standard-library server against the fastest
things people use instead, in alternating rounds, with each ratio and its spread.

    echo   lesson 11 (one process, every optimisation) against an asyncio Protocol echo on
           uvloop: 64-byte messages, 50 connections, each waiting for its echo (a closed
           loop), both C load generators of echo_bench.py. Goal: 1.0x or more.
    HTTP   lesson 11 --protocol http against one nginx worker (`return 200` from a temporary
           config on 127.0.0.1): wrk, keep-alive, 1 thread, 50 connections. Goal: 0.8x or more.

    .venv/bench/bin/python tools/bench/goals_bench.py [--rounds 5] [--seconds 2] [--no-pin]

Each round measures both servers of a goal, one after the other, the order alternating from
round to round; a ratio is taken within a round, so whatever else the machine does falls on
both. The figure printed is the median of the rounds' ratios with the lowest and the highest.
The echo ratio is also given per second of server CPU, steadier on a busy machine. Like the
other benchmarks it asserts nothing: it prints what it measured and whether each goal was met.
nginx is not installed by this (or by make): when it is missing, the HTTP goal is skipped and
the way to get it printed.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))

import echo_bench  # noqa: E402  (it puts notebooks/ on the path for harness)
import harness  # noqa: E402
import http_bench  # noqa: E402

LESSON = ROOT / "lessons" / "11_fast_server.py"
ECHO_GOAL = 1.0
HTTP_GOAL = 0.8
HTTP_WARM_UP = 1  # seconds of wrk against each server before the rounds (whole seconds)


def tree_cpu(pid):
    """CPU seconds used so far by a process and its children (nginx: the master and its
    worker), from /proc/PID/schedstat (nanoseconds, not sampled)."""
    def own(p):
        try:
            return int(Path(f"/proc/{p}/schedstat").read_text().split()[0])
        except (OSError, ValueError):
            return 0
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return (own(pid) + sum(own(int(child)) for child in children)) / 1e9


def band(values):
    mid, lo, hi, _ = echo_bench.spread(values)
    return f"{mid:.2f}x ({lo:.2f}-{hi:.2f} over {len(values)} rounds)"


def verdict(ratios, goal):
    mid = statistics.median(ratios)
    if mid >= goal:
        return f"goal {goal:.1f}x reached, by {mid / goal - 1:.0%}"
    return f"goal {goal:.1f}x NOT reached: {1 - mid / goal:.0%} short"


def echo_goal(args):
    servers = [("lesson 11", [str(LESSON)]),
               ("uvloop", [str(HERE / "asyncio_echo.py"), "--loop", "uvloop"])]
    rates = {(name, gen): [] for name, _ in servers for gen in echo_bench.GENERATORS}
    per_cpu = {key: [] for key in rates}
    with tempfile.TemporaryDirectory(prefix="goals-bench-") as tmp, ExitStack() as stack:
        binaries = echo_bench.build(tmp)
        running = {name: stack.enter_context(harness.start(*command)) for name, command in servers}
        cores = None if args.no_pin else echo_bench.pin(running.values())
        print("echo: " + (f"servers on CPU {cores[0]}, load generators on CPU {cores[1]}"
                          if cores else "not pinned"), flush=True)
        for server in running.values():  # warm-up (echo_bench.py says why it matters)
            for gen in echo_bench.GENERATORS:
                echo_bench.measure(binaries[gen], server, args, echo_bench.WARM_UP)
        for number in range(1, args.rounds + 1):
            order = servers if number % 2 else servers[::-1]
            for gen in echo_bench.GENERATORS:
                for name, _ in order:
                    rate, cpu, _ = echo_bench.measure(binaries[gen], running[name], args,
                                                      args.seconds)
                    rates[name, gen].append(rate)
                    per_cpu[name, gen].append(rate / cpu if cpu > 0 else 0.0)
            print(f"  echo round {number} of {args.rounds}: "
                  + ", ".join(f"{name} {rates[name, gen][-1]:,.0f}/s by {gen}"
                              for gen in echo_bench.GENERATORS for name, _ in servers),
                  flush=True)
    print("\necho, 64-byte messages, 50 connections: lesson 11 / uvloop")
    every, every_cpu = [], []
    for gen in echo_bench.GENERATORS:
        ratios = [a / b for a, b in zip(rates["lesson 11", gen], rates["uvloop", gen]) if b]
        cpu_ratios = [a / b for a, b in zip(per_cpu["lesson 11", gen], per_cpu["uvloop", gen])
                      if b]
        every += ratios
        every_cpu += cpu_ratios
        print(f"  by {gen:<10} messages/s {band(ratios)}; per server CPU-second "
              f"{band(cpu_ratios)}")
    print(f"  messages/s: {verdict(every, ECHO_GOAL)}; per server CPU-second: "
          f"{verdict(every_cpu, ECHO_GOAL)}\n  (each the median of every round by both "
          "generators; per CPU-second is the steadier on a busy machine)")


def http_goal(args):
    wrk = shutil.which("wrk")
    nginx = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None)
    missing = [(name, package) for name, path, package in
               (("wrk", wrk, "wrk"), ("nginx", nginx, "nginx-light")) if path is None]
    if missing:
        print(f"\nHTTP goal not measured: {' and '.join(name for name, _ in missing)} not "
              f"installed. On Debian or Ubuntu: sudo apt-get install "
              f"{' '.join(package for _, package in missing)} (this script runs nginx from a "
              "temporary config on 127.0.0.1, as its own child: no service to set up)")
        return
    cpus = sorted(os.sched_getaffinity(0))
    server_cpu, client_cpu = (cpus[0], cpus[-1]) if len(cpus) >= 2 and not args.no_pin \
        else (None, None)
    seconds = max(1, round(args.seconds))  # wrk counts whole seconds
    rps = {"lesson 11": [], "nginx": []}
    per_cpu = {"lesson 11": [], "nginx": []}  # requests per second of server CPU
    with tempfile.TemporaryDirectory(prefix="goals-http-") as tmp:
        workdir = Path(tmp)

        def nginx_command(port):
            conf = workdir / "nginx.conf"
            conf.write_text(http_bench.NGINX_CONF.format(tmp=workdir, port=port))
            return [nginx, "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "error.log")]

        contenders = [
            http_bench.Contender("lesson 11", "stdlib, epoll, one process",
                                 lambda port: [sys.executable, str(LESSON), "--protocol", "http",
                                               "--port", str(port)], workdir),
            http_bench.Contender("nginx", "C, 1 worker", nginx_command, workdir)]
        try:
            for contender in contenders:
                contender.start(server_cpu)
                http_bench.run_wrk(wrk, contender.port, HTTP_WARM_UP, args.connections,
                                   client_cpu)
            for number in range(1, args.rounds + 1):
                order = contenders if number % 2 else contenders[::-1]
                for contender in order:
                    cpu = tree_cpu(contender.proc.pid)
                    result = http_bench.run_wrk(wrk, contender.port, seconds, args.connections,
                                                client_cpu)
                    cpu = tree_cpu(contender.proc.pid) - cpu
                    per_cpu[contender.name].append(result["rps"] * seconds / cpu if cpu else 0.0)
                    if result["errors"]:
                        print(f"  {contender.name}: {result['errors']} errors in round {number}")
                    rps[contender.name].append(result["rps"])
                print(f"  HTTP round {number} of {args.rounds}: "
                      + ", ".join(f"{name} {values[-1]:,.0f} requests/s"
                                  for name, values in rps.items()), flush=True)
        except (http_bench.BenchError, subprocess.TimeoutExpired) as e:
            print(f"HTTP goal not measured: {e}")
            return
        finally:
            for contender in contenders:
                contender.stop()
    ratios = [a / b for a, b in zip(rps["lesson 11"], rps["nginx"]) if b]
    cpu_ratios = [a / b for a, b in zip(per_cpu["lesson 11"], per_cpu["nginx"]) if b]
    print(f"\nHTTP, wrk, keep-alive, {args.connections} connections: lesson 11 / one nginx "
          f"worker\n  requests/s {band(ratios)}; per server CPU-second {band(cpu_ratios)}"
          f"\n  requests/s: {verdict(ratios, HTTP_GOAL)}; per server CPU-second: "
          f"{verdict(cpu_ratios, HTTP_GOAL)}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--size", type=int, default=64, help="bytes per echo message")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of one measurement")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-pin", action="store_true",
                        help="leave the servers and the load generators to the scheduler")
    args = parser.parse_args()
    if not (1 <= args.connections <= 10000 and 24 <= args.size <= 65536
            and 0 < args.seconds <= 60 and 1 <= args.rounds <= 100):
        parser.error("--connections 1 to 10000, --size 24 to 65536, --seconds up to 60, "
                     "--rounds 1 to 100")
    print(f"lesson 11's goals: {args.rounds} alternating rounds of {args.seconds:g} s; load "
          f"average {echo_bench.loadavg()} at the start", flush=True)
    try:
        echo_goal(args)
        http_goal(args)
    except KeyboardInterrupt:  # every server has been stopped on the way out
        sys.exit("goals_bench: interrupted")
    print(f"\nload average {echo_bench.loadavg()} at the end. The ratios belong to this machine "
          "as it was during the run.")


if __name__ == "__main__":
    main()
