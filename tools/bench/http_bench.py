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

wrk drives each in turn with keep-alive connections, one thread, 50 connections, after a
short warm-up. On a machine with two or more cores the server is pinned to the first core
and wrk to the last, so each server gets one core whatever it would do with more.

    .venv/bench/bin/python tools/bench/http_bench.py [--duration 3] [--connections 50]

It prints requests per second and each server's ratio to the lesson responder. It is a
benchmark, not a test: it asserts nothing about speed. Uses the standard library plus the
packages in tools/bench/requirements.txt.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LESSON = ROOT / "lessons" / "04_http_responder.py"
BODY = b"Hello, world!"
READY_TIMEOUT = 20.0  # seconds a server may take to answer its first request
STOP_GRACE = 3.0

UVICORN_APP = '''
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
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

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Hello).serve_forever()
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


class BenchError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pin_to(cpu):
    """preexec_fn: run the child (and every thread it starts) on one core."""
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


class Contender:
    """One server under test: how to start it, and the process once started."""

    def __init__(self, name: str, note: str, command, workdir: Path):
        self.name, self.note, self.command, self.workdir = name, note, command, workdir
        self.proc: subprocess.Popen | None = None
        self.port = 0
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


def run_wrk(wrk: str, port: int, seconds: float, connections: int, cpu) -> dict:
    timeout = seconds + 30
    got = subprocess.run(
        [wrk, "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "5s",
         f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, timeout=timeout, preexec_fn=pin_to(cpu))
    if got.returncode != 0:
        raise BenchError(f"wrk failed: {got.stderr.strip() or got.stdout.strip()}")
    rps = re.search(r"Requests/sec:\s*([\d.]+)", got.stdout)
    if not rps:
        raise BenchError(f"could not read wrk's output:\n{got.stdout}")
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                       got.stdout)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", got.stdout)
    return {"rps": float(rps.group(1)),
            "errors": (sum(map(int, errors.groups())) if errors else 0)
            + (int(non2xx.group(1)) if non2xx else 0)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # wrk takes whole seconds only (it rejects -d0.5s), so these are whole numbers too.
    parser.add_argument("--duration", type=int, default=3, help="seconds per server")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=1, help="seconds before measuring (0: none)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="measure every server this many times, in turn; keep the best")
    parser.add_argument("--no-pin", action="store_true",
                        help="do not pin the server and wrk to separate cores")
    args = parser.parse_args()
    if args.duration < 1 or args.warmup < 0 or args.rounds < 1 or args.connections < 1:
        parser.error("--duration, --rounds and --connections must be at least 1, "
                     "--warmup at least 0")
    wrk = shutil.which("wrk")
    if wrk is None:
        print("http_bench: error: wrk is not installed; on Debian or Ubuntu: sudo apt-get install wrk",
              file=sys.stderr)
        return 2
    cpus = sorted(os.sched_getaffinity(0))
    pin = len(cpus) >= 2 and not args.no_pin
    server_cpu, client_cpu = (cpus[0], cpus[-1]) if pin else (None, None)

    # SIGTERM (or Ctrl-C) ends the run through the finally below: no server is left behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    best: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="http-bench-") as tmp:
        workdir = Path(tmp)
        found, missing = contenders(workdir)
        print(f"HTTP benchmark: wrk, keep-alive, 1 thread, {args.connections} connections, "
              f"{args.duration:g} s per server and round, best of {args.rounds} rounds; "
              f"body {BODY.decode()!r}")
        if pin:
            print(f"each server pinned to CPU {server_cpu}, wrk to CPU {client_cpu}")
        for name in missing:
            print(f"(not measured: {name} is not installed)")
        try:
            running = []
            for contender in found:
                try:
                    contender.start(server_cpu)
                    if args.warmup > 0:
                        run_wrk(wrk, contender.port, args.warmup, args.connections, client_cpu)
                    running.append(contender)
                except (BenchError, subprocess.TimeoutExpired) as e:
                    print(f"{contender.name}: not measured: {e}")
                    contender.stop()
            # Taking turns spreads whatever else the machine does over all the servers.
            for round_number in range(1, args.rounds + 1):
                for contender in running:
                    try:
                        result = run_wrk(wrk, contender.port, args.duration, args.connections,
                                         client_cpu)
                    except (BenchError, subprocess.TimeoutExpired) as e:
                        print(f"{contender.name}: round {round_number} failed: {e}")
                        continue
                    print(f"  round {round_number}, {contender.name}: "
                          f"{result['rps']:,.0f} requests/s", flush=True)
                    if contender.name not in best or result["rps"] > best[contender.name]["rps"]:
                        best[contender.name] = result
        finally:
            for contender in found:
                contender.stop()
    results = [(c, best[c.name]) for c in found if c.name in best]

    lesson = next((r for c, r in results if c.name == "lesson 04"), None)
    print()
    print(f"{'server':<13} {'what':<32} {'requests/s':>11} {'errors':>7} {'lesson 04 ÷ it':>15}")
    for contender, result in results:
        ratio = (f"{lesson['rps'] / result['rps']:.2f}x"
                 if lesson and result["rps"] else "-")
        print(f"{contender.name:<13} {contender.note:<32} {result['rps']:>11,.0f} "
              f"{result['errors']:>7} {ratio:>15}")
    uvicorn = next((r for c, r in results if c.name == "uvicorn"), None)
    if lesson and uvicorn:
        ratio = lesson["rps"] / uvicorn["rps"]
        print()
        print(textwrap.fill(
            f"The lesson responder served {ratio:.2f} times as many requests per second as "
            f"uvicorn with uvloop and httptools (the workbook aims for at least 1.5).", 92))
    return 0 if lesson else 1


if __name__ == "__main__":
    sys.exit(main())
