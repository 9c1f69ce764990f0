#!/usr/bin/env python3
"""The HTTP benchmark (`make bench`): lesson 04's responder beside what people use instead.

Every server answers GET / with the same 13 bytes, "Hello, world!", as text/plain, and runs
as one process on 127.0.0.1 at a free port:

    lesson 04     lessons/04_http_responder.py (standard library, one thread, epoll)
    uvicorn       a minimal ASGI app, one worker, --loop uvloop --http httptools
    aiohttp       a minimal aiohttp.web app
    http.server   the standard library's ThreadingHTTPServer, speaking HTTP/1.1
    nginx         `return 200` from a temporary config, one worker (when nginx is installed):
                  the native ceiling

Two load generators measure each server: wrk, and h2load speaking HTTP/1.1 (http_load.py
says why that one, and how both check every answer). Both use keep-alive connections, one
thread, 50 connections with one request in flight on each, after a warm-up run of each
against each server that also checks every answer. On a machine with two or more cores the
server is pinned to the first core and the generator to the last, so each server gets one
core whatever it would do with more.

    .venv/bench/bin/python tools/bench/http_bench.py [--duration 2] [--rounds 5]
        [--only lesson04,uvicorn] [--generator wrk|h2load|both] [--no-pin]

Rounds take turns: each round measures every server with each generator, the order of the
servers and of the generators reversed from one round to the next, so whatever else the
machine does falls on all of them. For each server and generator it prints the median
requests per second of the rounds with the lowest and the highest, the share of its core the
generator used, and the ratio of lesson 04 to that server, taken round by round with the same
generator (median, lowest-highest); then how far apart the two generators' ratios lie. A
run that saw a wrong answer or a socket error is reported and not counted. Without h2load it
says how to install it and goes on with wrk alone.

It is a benchmark, not a test: it asserts nothing about speed. Uses the standard library plus
the packages in tools/bench/requirements.txt.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import http_load  # noqa: E402
from http_load import BODY, BenchError, pin_to  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
LESSON = ROOT / "lessons" / "04_http_responder.py"
READY_TIMEOUT = 20.0  # seconds a server may take to answer its first request
STOP_GRACE = 3.0

UVICORN_APP = '''
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"13")]})
    await send({"type": "http.response.body", "body": b"Hello, world!"})
'''

AIOHTTP_APP = '''
import sys
from aiohttp import web

async def hello(request):
    return web.Response(body=b"Hello, world!", content_type="text/plain")

app = web.Application()
app.router.add_get("/", hello)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
'''

HTTP_SERVER_APP = '''
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Hello(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; the default HTTP/1.0 closes every time
    # Headers and body leave in two writes; without TCP_NODELAY the second waits for the
    # client's delayed ACK (about 40 ms), and the server would measure that, not itself.
    disable_nagle_algorithm = True

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", "13")
        self.end_headers()
        self.wfile.write(b"Hello, world!")

    def log_message(self, *args):
        pass

class Server(ThreadingHTTPServer):
    # listen()'s backlog; the default, 5, is overflowed by 50 clients connecting at once: the
    # SYNs beyond it are dropped, and those clients connect only when the kernel sends them
    # again, a second later, a second of every run lost.
    request_queue_size = 128

Server(("127.0.0.1", int(sys.argv[1])), Hello).serve_forever()
'''

NGINX_CONF = '''
daemon off;
master_process on;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            default_type text/plain;
            return 200 "Hello, world!";
        }}
    }}
}}
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Contender:
    """One server under test: how to start it, and the process once started."""

    def __init__(self, name: str, note: str, command, workdir: Path):
        self.name, self.note, self.command, self.workdir = name, note, command, workdir
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.answer_bytes = None  # the whole answer to wrk's GET /, once probed
        self.log = workdir / f"{re.sub(r'[^a-z0-9]+', '-', name.lower())}.log"

    def start(self, cpu) -> None:
        self.port = free_port()
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                self.command(self.port), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, cwd=str(self.workdir), preexec_fn=pin_to(cpu))
        self.wait_ready()

    def wait_ready(self) -> None:
        """Bounded: the first GET / must come back with the very same body."""
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited with status {self.proc.returncode}: "
                                 f"{self.log.read_text(errors='replace').strip()[-400:]}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
                conn.request("GET", "/")
                response = conn.getresponse()
                body = response.read()
                conn.close()
                if response.status == 200 and body == BODY:
                    return
                raise BenchError(f"{self.name} answered {response.status} {body[:40]!r}")
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name} did not answer within {READY_TIMEOUT:g} s")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def contenders(workdir: Path) -> tuple[list[Contender], list[str]]:
    py = sys.executable
    found = [Contender("lesson 04", "stdlib, epoll, one thread",
                       lambda port: [py, str(LESSON), "--port", str(port)], workdir)]
    missing = []

    (workdir / "asgi_hello.py").write_text(UVICORN_APP)
    if have_modules("uvicorn", "uvloop", "httptools"):
        found.append(Contender(
            "uvicorn", "uvloop + httptools, 1 worker",
            lambda port: [py, "-m", "uvicorn", "asgi_hello:app", "--app-dir", str(workdir),
                          "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                          "--loop", "uvloop", "--http", "httptools",
                          "--log-level", "warning", "--no-access-log"], workdir))
    else:
        missing.append("uvicorn (with uvloop and httptools)")

    (workdir / "aiohttp_hello.py").write_text(AIOHTTP_APP)
    if have_modules("aiohttp"):
        found.append(Contender("aiohttp", "aiohttp.web",
                               lambda port: [py, "aiohttp_hello.py", str(port)], workdir))
    else:
        missing.append("aiohttp")

    (workdir / "stdlib_hello.py").write_text(HTTP_SERVER_APP)
    found.append(Contender("http.server", "ThreadingHTTPServer, HTTP/1.1",
                           lambda port: [py, "stdlib_hello.py", str(port)], workdir))

    nginx = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None)
    if nginx:
        def nginx_command(port):
            conf = workdir / "nginx.conf"
            conf.write_text(NGINX_CONF.format(tmp=workdir, port=port))
            return [nginx, "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "error.log")]
        found.append(Contender("nginx", "C, 1 worker: the ceiling", nginx_command, workdir))
    else:
        missing.append("nginx")
    return found, missing


def have_modules(*names: str) -> bool:
    import importlib.util
    return all(importlib.util.find_spec(name) is not None for name in names)


def key(name: str) -> str:
    """How --only names a server: its name in lower case without spaces or dots."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


SERVERS = ["lesson 04", "uvicorn", "aiohttp", "http.server", "nginx"]  # as contenders() names them
SPELLED = ", ".join(name.replace(" ", "") for name in SERVERS)  # as --only takes them
BASE = "lesson 04"  # the ratios are of this one to each other server


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}x ({min(values):.2f}-{max(values):.2f})"


def warm_up_and_check(contender: Contender, generators: dict, seconds: int, connections: int,
                      client_cpu) -> None:
    """The answer's exact size for wrk's byte count, then one run of each generator that also
    checks every answer (and warms the server up). Raises BenchError on a wrong answer."""
    contender.answer_bytes = http_load.probe(contender.port)
    for name, path in generators.items():
        run = http_load.measure(name, path, contender.port, seconds, connections, client_cpu,
                                check=True, answer_bytes=contender.answer_bytes)
        if run.problems:
            raise BenchError(f"answered wrongly under {name}: {'; '.join(run.problems)}")


def measure_rounds(running: list[Contender], generators: dict, args, client_cpu) -> dict:
    """{(server, generator): {round: Run}}, with only the runs that saw nothing wrong."""
    runs = {(c.name, g): {} for c in running for g in generators}
    for number in range(1, args.rounds + 1):
        servers = running if number % 2 else running[::-1]
        order = list(generators) if number % 2 else list(generators)[::-1]
        figures = []
        for contender in servers:
            for name in order:
                try:
                    run = http_load.measure(name, generators[name], contender.port,
                                            args.duration, args.connections, client_cpu,
                                            answer_bytes=contender.answer_bytes,
                                            server_pid=contender.proc.pid)
                except BenchError as e:
                    print(f"  round {number}, {contender.name} by {name}: failed: {e}")
                    continue
                if run.problems:
                    print(f"  round {number}, {contender.name} by {name}: not counted: "
                          f"{'; '.join(run.problems)}")
                    continue
                runs[contender.name, name][number] = run
                figures.append(f"{contender.name} {run.rps:,.0f}/s by {name}")
        print(f"  round {number} of {args.rounds}, load average {load_average()}: "
              + ", ".join(figures), flush=True)
    return runs


def load_average() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def report(running: list[Contender], generators: dict, runs: dict, args) -> bool:
    """The table; True when at least one figure was measured."""
    base = next((c for c in running if c.name == BASE), None)
    limit = f"{http_load.GENERATOR_LIMIT:.0%}"
    print(f"""
requests/s: the median of the n rounds counted (of {args.rounds}), the lowest and the highest.
CPU: the share of one core used by the server / by the load generator (medians; * at {limit}
or more: the generator may be what limits). {BASE} / it: in each round, {BASE}'s
figure over this server's by the same generator, the median of the rounds (lowest-highest):
by requests/s, and by requests per second of server CPU (steadier on a busy machine).""")
    print(f"{'server':<12}{'by':<7}{'requests/s':>11}{'lowest-highest':>17}{'n':>3}"
          f"{'CPU':>12} {BASE + ' / it':>19}{'per CPU-s':>19}")
    measured, limited, ratios_by = False, False, {}
    for contender in running:
        for i, name in enumerate(generators):
            got = runs[contender.name, name]
            label = contender.name if i == 0 else ""
            if not got:
                print(f"{label:<12}{name:<7}{'-':>11}  no round counted")
                continue
            measured = True
            rates = [run.rps for run in got.values()]
            cpu = statistics.median(run.cpu for run in got.values())
            server = statistics.median(run.server_cpu for run in got.values())
            busy = cpu >= http_load.GENERATOR_LIMIT
            limited = limited or busy
            cells = ["-", "-"]
            if base is not None and contender is not base:
                for k, figure in enumerate(("rps", "per_cpu")):
                    ratios = [getattr(runs[base.name, name][n], figure) / getattr(run, figure)
                              for n, run in got.items()
                              if n in runs[base.name, name] and getattr(run, figure)]
                    if ratios:
                        ratios_by[contender.name, name, figure] = ratios
                        cells[k] = spread(ratios)
            print(f"{label:<12}{name:<7}{statistics.median(rates):>11,.0f}"
                  f"{f'{min(rates):,.0f}-{max(rates):,.0f}':>17}{len(rates):>3}"
                  f"{f'{server:.0%} / {cpu:.0%}':>12}{'*' if busy else ' '}"
                  f"{cells[0]:>19}{cells[1]:>19}")
        if len(generators) == 2:
            first, second = generators
            print(f"{'':<12}{agreement(contender.name, first, second, runs, ratios_by)}")
    if limited:
        print("* the load generator used most of its core: the server may be faster than this.")
    return measured


def agreement(server: str, first: str, second: str, runs: dict, ratios_by: dict) -> str:
    """One line: how far apart the two generators' figures for one server lie."""
    medians = [statistics.median(run.rps for run in runs[server, gen].values())
               if runs[server, gen] else 0.0 for gen in (first, second)]
    if not all(medians):
        return "the two generators cannot be compared: one counted no round"
    line = f"{second} over {first}: requests/s {medians[1] / medians[0]:.2f}"
    verdicts = []
    for figure, what in (("rps", f"{BASE} / it"), ("per_cpu", "per CPU-s")):
        if (server, first, figure) in ratios_by and (server, second, figure) in ratios_by:
            a, b = (statistics.median(ratios_by[server, gen, figure]) for gen in (first, second))
            line += f", {what} {b / a:.2f}"
            verdicts.append(http_load.agree(a, b))
    if verdicts:
        line += (f": the ratios agree within {http_load.AGREE:.0%}" if all(verdicts) else
                 f": {'both ratios differ' if not any(verdicts) else 'a ratio differs'} by "
                 f"more than {http_load.AGREE:.0%}")
    return line


def fail(message: str) -> int:
    print(f"http_bench: error: {message}", file=sys.stderr)
    return 2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # wrk takes whole seconds only (it rejects -d0.5s), so these are whole numbers too.
    parser.add_argument("--duration", type=int, default=2,
                        help="seconds per server, generator and round")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=1,
                        help="seconds of each generator against each server before the rounds, "
                             "checking every answer")
    parser.add_argument("--rounds", type=int, default=5,
                        help="measure every server this many times, taking turns")
    parser.add_argument("--only", metavar="NAME[,NAME]",
                        help=f"measure only these servers, of {SPELLED}")
    parser.add_argument("--generator", choices=["wrk", "h2load", "both"], default="both",
                        help="the load generator(s); both by default")
    parser.add_argument("--no-pin", action="store_true",
                        help="do not pin the servers and the generators to separate cores")
    args = parser.parse_args()
    if not (1 <= args.duration <= 600 and 1 <= args.warmup <= 60 and 1 <= args.rounds <= 100
            and 1 <= args.connections <= 10000):
        return fail("--duration 1 to 600, --warmup 1 to 60, --rounds 1 to 100, "
                    "--connections 1 to 10000")
    only = None
    if args.only is not None:
        asked = [name.strip() for name in args.only.split(",") if name.strip()]
        unknown = [name for name in asked if key(name) not in map(key, SERVERS)]
        if unknown or not asked:
            return fail(f"--only: no server named {', '.join(unknown) or repr(args.only)}; "
                        f"the servers are {SPELLED}")
        only = set(map(key, asked))
    wanted = http_load.NAMES if args.generator == "both" else [args.generator]
    generators, missing = http_load.find(wanted)
    if not generators:
        return fail(" and ".join(missing))
    cpus = sorted(os.sched_getaffinity(0))
    pin = len(cpus) >= 2 and not args.no_pin
    server_cpu, client_cpu = (cpus[0], cpus[-1]) if pin else (None, None)

    # SIGTERM (or Ctrl-C) ends the run through the finally below: no server is left behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="http-bench-") as tmp:
        workdir = Path(tmp)
        found, not_installed = contenders(workdir)
        if only is not None:
            found = [c for c in found if key(c.name) in only]
            not_installed = [n for n in not_installed if key(n.split()[0]) in only]
        print(f"HTTP benchmark: {' and '.join(generators)}, keep-alive HTTP/1.1, 1 thread, "
              f"{args.connections} connections with one request in flight on each; "
              f"{args.rounds} round{'s' if args.rounds > 1 else ''} of {args.duration} s per "
              f"server and generator; body "
              f"{BODY.decode()!r}; load average {load_average()} at the start")
        print("servers: " + ", ".join(f"{c.name} ({c.note})" for c in found))
        if pin:
            print(f"each server pinned to CPU {server_cpu}, each load generator to CPU "
                  f"{client_cpu}")
        for line in missing:
            print(f"(measured without {line.split()[0]}: {line})")
        for name in not_installed:
            print(f"(not measured: {name} is not installed)")
        try:
            running = []
            for contender in found:
                try:
                    contender.start(server_cpu)
                    warm_up_and_check(contender, generators, args.warmup, args.connections,
                                      client_cpu)
                    running.append(contender)
                except BenchError as e:
                    print(f"{contender.name}: not measured: {e}")
                    contender.stop()
            runs = measure_rounds(running, generators, args, client_cpu) if running else {}
        finally:
            for contender in found:
                contender.stop()
    measured = report(running, generators, runs, args)
    uvicorn = next((c for c in running if c.name == "uvicorn"), None)
    base = next((c for c in running if c.name == BASE), None)
    if base and uvicorn:
        said = []
        for name in generators:
            ratios = [runs[BASE, name][n].rps / run.rps
                      for n, run in runs["uvicorn", name].items() if n in runs[BASE, name]]
            if ratios:
                said.append(f"{statistics.median(ratios):.2f} times by {name}")
        if said:
            print()
            print(textwrap.fill(
                f"The lesson responder served {' and '.join(said)} as many requests per second "
                f"as uvicorn with uvloop and httptools (the workbook aims for at least 1.5).", 92))
    print(f"\nload average {load_average()} at the end. These figures belong to this machine as "
          "it was during the run.")
    return 0 if measured else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # every server has been stopped on the way out
        sys.exit("http_bench: interrupted")
