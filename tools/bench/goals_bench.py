"""Lesson 11's goals (`make bench`): the fastest standard-library server against the fastest
things people use instead, in alternating rounds, with each ratio and its spread.

    echo   lesson 11 (one process, every optimisation) against an asyncio Protocol echo on
           uvloop: 64-byte messages, 50 connections, each waiting for its echo (a closed
           loop), both C load generators of echo_bench.py. Goal: 1.0x or more.
    HTTP   lesson 11 --protocol http against one nginx worker (`return 200` from a temporary
           config on 127.0.0.1): keep-alive, 1 thread, 50 connections, by both HTTP load
           generators of http_bench.py, wrk and h2load (http_load.py). Goal: 0.8x or more.

    .venv/bench/bin/python tools/bench/goals_bench.py [--rounds 5] [--seconds 2] [--no-pin]

Each round measures both servers of a goal, one after the other, the order alternating from
round to round; a ratio is taken within a round, so whatever else the machine does falls on
both. The figure printed is the median of the rounds' ratios with the lowest and the highest.
Each ratio is also given per second of server CPU, steadier on a busy machine, and for each
generator apart, with how far the two generators' ratios lie from each other; each verdict
takes the rounds of both. An HTTP run with a wrong answer is reported and not counted. Like
the other benchmarks it asserts nothing: it prints what it measured and whether each goal was
met. nginx and h2load are not installed by this (or by make): without nginx the HTTP goal is
skipped, without h2load wrk measures it alone, and the way to get what is missing is printed.
"""

import argparse
import os
import shutil
import statistics
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
import http_load  # noqa: E402

LESSON = ROOT / "lessons" / "11_fast_server.py"
ECHO_GOAL = 1.0
HTTP_GOAL = 0.8
HTTP_WARM_UP = 1  # seconds of each HTTP generator against each server before the rounds


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
    found, missing = http_load.find(http_load.NAMES)
    nginx = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None)
    if not found or nginx is None:
        lacking = ([] if found else ["a load generator (wrk or h2load)"]) + \
            ([] if nginx else ["nginx"])
        packages = ([] if found else ["wrk"]) + ([] if nginx else ["nginx-light"])
        print(f"\nHTTP goal not measured: {' and '.join(lacking)} not installed. On Debian or "
              f"Ubuntu: sudo apt-get install {' '.join(packages)} (this script runs nginx from a "
              "temporary config on 127.0.0.1, as its own child: no service to set up)")
        return
    for line in missing:  # the goal is measured by the other generator alone
        print(f"\n(HTTP goal measured without {line.split()[0]}: {line})", end="")
    cpus = sorted(os.sched_getaffinity(0))
    server_cpu, client_cpu = (cpus[0], cpus[-1]) if len(cpus) >= 2 and not args.no_pin \
        else (None, None)
    seconds = max(1, round(args.seconds))  # wrk counts whole seconds
    names = ("lesson 11", "nginx")
    # {(server, generator): {round: (requests/s, requests per second of server CPU, the
    # generator's share of its core, the server's share of its core)}}, only for runs in
    # which every answer was right.
    got = {(name, gen): {} for name in names for gen in found}
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
        print(f"\nHTTP: {' and '.join(found)}, keep-alive HTTP/1.1, 1 thread, "
              f"{args.connections} connections, {seconds} s a run; "
              + (f"servers on CPU {server_cpu}, load generators on CPU {client_cpu}"
                 if server_cpu is not None else "not pinned"), flush=True)
        try:
            for contender in contenders:
                contender.start(server_cpu)
                try:
                    http_bench.warm_up_and_check(contender, found, HTTP_WARM_UP,
                                                 args.connections, client_cpu)
                except http_load.BenchError as e:
                    raise http_load.BenchError(f"{contender.name} {e}") from None
            for number in range(1, args.rounds + 1):
                order = contenders if number % 2 else contenders[::-1]
                gens = list(found) if number % 2 else list(found)[::-1]
                for contender in order:
                    for gen in gens:
                        try:
                            run = http_load.measure(gen, found[gen], contender.port, seconds,
                                                    args.connections, client_cpu,
                                                    answer_bytes=contender.answer_bytes,
                                                    server_pid=contender.proc.pid)
                        except http_load.BenchError as e:
                            print(f"  {contender.name} by {gen}, round {number}: failed: {e}")
                            continue
                        if run.problems:
                            print(f"  {contender.name} by {gen}, round {number}: not counted: "
                                  f"{'; '.join(run.problems)}")
                            continue
                        got[contender.name, gen][number] = (run.rps, run.per_cpu, run.cpu,
                                                            run.server_cpu)
                print(f"  HTTP round {number} of {args.rounds}: "
                      + ", ".join(f"{name} {got[name, gen][number][0]:,.0f}/s by {gen}"
                                  for gen in gens for name in names
                                  if number in got[name, gen]), flush=True)
        except http_load.BenchError as e:
            print(f"HTTP goal not measured: {e}")
            return
        finally:
            for contender in contenders:
                contender.stop()
    print(f"\nHTTP, keep-alive, {args.connections} connections: lesson 11 / one nginx worker")
    every, every_cpu, medians, limited = [], [], {}, False
    for gen in found:
        lesson, ceiling = got["lesson 11", gen], got["nginx", gen]
        both = [n for n in lesson if n in ceiling and ceiling[n][0] and ceiling[n][1]]
        if not both:
            print(f"  by {gen:<7} no round with both servers counted")
            continue
        ratios = [lesson[n][0] / ceiling[n][0] for n in both]
        cpu_ratios = [lesson[n][1] / ceiling[n][1] for n in both]
        every += ratios
        every_cpu += cpu_ratios
        medians[gen] = statistics.median(ratios)
        load = []
        for name in names:
            if got[name, gen]:
                rps, _, generator, server = (
                    statistics.median(r[i] for r in got[name, gen].values()) for i in range(4))
                busy = generator >= http_load.GENERATOR_LIMIT
                limited = limited or busy
                load.append(f"{name} {rps:,.0f}/s (CPU {server:.0%}, generator {generator:.0%}"
                            + ("*)" if busy else ")"))
        load = ", ".join(load)
        print(f"  by {gen:<7} requests/s {band(ratios)}; per server CPU-second "
              f"{band(cpu_ratios)}\n          medians: {load}")
    if limited:
        print("  * the load generator used most of its core: the server may be faster than "
              "this;\n    the ratio per server CPU-second does not depend on it")
    if len(medians) == 2:
        (a_gen, a), (b_gen, b) = medians.items()
        print(f"  {b_gen}'s ratio over {a_gen}'s: {b / a:.2f}: "
              + (f"the two generators agree within {http_load.AGREE:.0%}"
                 if http_load.agree(a, b) else
                 f"they differ by more than {http_load.AGREE:.0%}, not a figure to trust yet"))
    if every:
        print(f"  requests/s: {verdict(every, HTTP_GOAL)}; per server CPU-second: "
              f"{verdict(every_cpu, HTTP_GOAL)}\n  (each the median of every round by "
              f"{'both generators' if len(found) == 2 else 'the one generator'})")


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
    cpus = os.sched_getaffinity(0)
    try:
        echo_goal(args)
        # The echo goal pinned this process to the last CPU (echo_bench.pin: its generators
        # inherit that). Undone here, or the HTTP goal would see one CPU, pin nothing, and
        # run its servers and generators on that one core.
        os.sched_setaffinity(0, cpus)
        http_goal(args)
    except KeyboardInterrupt:  # every server has been stopped on the way out
        sys.exit("goals_bench: interrupted")
    print(f"\nload average {echo_bench.loadavg()} at the end. The ratios belong to this machine "
          "as it was during the run.")


if __name__ == "__main__":
    main()
