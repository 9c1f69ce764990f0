"""The HTTP benchmarks' tooling (tools/bench/http_bench.py, http_load.py): what can be checked
without a long run. A user's mistake gets one line; both load generators' output is read
right; an answer that is wrong (a short body, a status other than 200) is reported by each
generator and not counted; a server's CPU counts its threads that have ended; a one-second
run against lesson 04 prints its figure.

The speed figures themselves are not tested: benchmarks assert nothing about speed. h2load
(nghttp2-client) is in .ci/tools.txt, as wrk is: where it is missing its cases skip with the
package to install, and under CI they fail instead (conftest.require_tool)."""

import argparse
import itertools
import os
import re
import subprocess
import sys
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import require_tool

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "tools" / "bench"
sys.path.insert(0, str(BENCH))

import http_bench  # noqa: E402
import http_load  # noqa: E402

RUN_TIMEOUT = 60  # seconds a one-second benchmark run may take on a busy machine


def h2load():
    return require_tool("h2load")


def generator(name):
    return require_tool(name)


def bench(*args):
    return subprocess.run([sys.executable, str(BENCH / "http_bench.py"), *args],
                          capture_output=True, text=True, timeout=RUN_TIMEOUT)


# -- the user's mistakes -------------------------------------------------------------------

@pytest.mark.parametrize("args, says", [
    (["--only", "lesson04,nosuch"], "--only: no server named nosuch; the servers are lesson04, "),
    (["--only", ","], "--only: no server named"),
    (["--duration", "0"], "--duration 1 to 600"),
])
def test_a_mistake_is_one_line(args, says):
    got = bench(*args)
    assert got.returncode == 2, got
    assert got.stdout == ""
    assert got.stderr.count("\n") == 1 and got.stderr.startswith(f"http_bench: error: {says}"), \
        got.stderr


def test_only_takes_names_as_they_are_printed():
    assert http_bench.key("lesson 04") == http_bench.key("lesson04") == "lesson04"
    assert http_bench.key("http.server") == http_bench.key("HTTP.server")
    spelled = http_bench.SPELLED.split(", ")
    assert [http_bench.key(name) for name in spelled] == list(map(http_bench.key,
                                                                  http_bench.SERVERS))


# -- reading the generators' output --------------------------------------------------------

WRK_LINE = ("wrk-summary requests {requests} microseconds 2000000 bytes {bytes} connect 0 "
            "read {read} write 0 timeout 0 status {status} wrong {wrong} checked false\n")


def test_wrk_line_read():
    ok = WRK_LINE.format(requests=20000, bytes=20000 * 139 + 70, read=0, status=0, wrong=0)
    rps, requests, problems = http_load.parse_wrk("Running 2s test\n" + ok, 50, 139)
    assert (rps, requests, problems) == (10000.0, 20000, [])


@pytest.mark.parametrize("fields, says", [
    ({"bytes": 20000 * 139 - 8}, "read 2,779,992 bytes, not 20,000 answers of 139 bytes"),
    ({"bytes": 20050 * 139 + 1}, "not 20,000 answers of 139 bytes"),
    ({"status": 3}, "3 answers with status 400 or more"),
    ({"read": 2}, "socket errors: read 2"),
    ({"wrong": 7}, "7 answers not 200 with a 13-byte body"),
    ({"requests": 0, "bytes": 0}, "no answer at all"),
])
def test_wrk_line_with_something_wrong(fields, says):
    line = WRK_LINE.format(**{"requests": 20000, "bytes": 20000 * 139, "read": 0, "status": 0,
                              "wrong": 0, **fields})
    _, _, problems = http_load.parse_wrk(line, 50, 139)
    assert any(says in problem for problem in problems), problems


def test_wrk_output_not_understood():
    with pytest.raises(http_load.BenchError, match="could not read wrk's output"):
        http_load.parse_wrk("Requests/sec: 1000\n", 50, 139)


H2LOAD_OUTPUT = """starting benchmark...
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 2.00s, 69884.00 req/s, 9.26MB/s
requests: {done} total, {started} started, {done} done, {done} succeeded, {failed} failed, 0 errored, 0 timeout
status codes: {ok} 2xx, 0 3xx, {failed} 4xx, 0 5xx
traffic: 18.53MB (19427752) total, 12.13MB (12719616) headers (space savings 0.00%), 1.73MB ({body}) data
                     min         max         mean         sd        +/- sd
time for request:      124us      4.31ms       600us       138us    96.71%
"""


def test_h2load_output_read():
    out = H2LOAD_OUTPUT.format(done=139768, started=139818, ok=139769, failed=0,
                               body=13 * 139776)
    assert http_load.parse_h2load(out) == (69884.0, 139768, [])


@pytest.mark.parametrize("fields, says", [
    ({"body": 13 * 139768 - 8}, "bytes of bodies, not 13 for each of 139,768 answers"),
    ({"body": 13 * 139818 + 13}, "bytes of bodies, not 13 for each"),
    ({"ok": 139700, "failed": 68}, "68 answers not 2xx (3xx 0, 4xx 68, 5xx 0)"),
    ({"ok": 139700, "failed": 68}, "requests failed 68"),
])
def test_h2load_output_with_something_wrong(fields, says):
    values = {"done": 139768, "started": 139818, "ok": 139768, "failed": 0,
              "body": 13 * 139768, **fields}
    _, _, problems = http_load.parse_h2load(H2LOAD_OUTPUT.format(**values))
    assert any(says in problem for problem in problems), problems


BURN_IN_A_THREAD = """
import threading, time
def burn():
    end = time.thread_time() + 0.3
    while time.thread_time() < end:
        pass
    print(time.thread_time(), flush=True)
thread = threading.Thread(target=burn)
thread.start()
thread.join()
input()  # wait for the test to read the CPU used, then for it to close stdin
"""


def test_server_cpu_counts_threads_that_have_ended():
    # http.server serves each connection in a thread of its own, gone when it closes: its CPU
    # time must still be counted (a server's main thread alone would show almost none).
    child = subprocess.Popen([sys.executable, "-c", BURN_IN_A_THREAD], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        burnt = float(child.stdout.readline())
        assert http_load.cpu_seconds(child.pid) >= burnt - 0.02  # clock ticks of 10 ms
    finally:
        child.stdin.close()
        child.wait(10)


# -- real runs against a server that answers wrongly now and then -----------------------------

class Sometimes(BaseHTTPRequestHandler):
    """Of every five answers, the first two right, the third with status 201, the fourth
    right, the fifth with a body of 5 bytes (each framed right, by its Content-Length)."""
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self):
        turn = next(self.server.count) % 5
        body = b"Hello" if turn == 4 else http_load.BODY
        self.send_response(201 if turn == 2 else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def handle_error(self, request, client_address):
        pass  # a generator closing its connections at the end is no news


@contextmanager
def sometimes_wrong():
    server = Server(("127.0.0.1", 0), Sometimes)
    server.count = itertools.count()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def problems_of(name, port, **kwargs):
    run = http_load.measure(name, generator(name), port, 1, 4, **kwargs)
    assert run.requests > 0, run
    return " | ".join(run.problems)


def test_wrk_reports_wrong_answers():
    with sometimes_wrong() as port:
        size = http_load.probe(port)  # the first answer is right
        said = problems_of("wrk", port, check=True, answer_bytes=size)
    assert "answers not 200 with a 13-byte body" in said  # each answer, in wrk's Lua hook
    assert f"answers of {size} bytes" in said  # the bytes it read


def test_h2load_reports_wrong_answers():
    with sometimes_wrong() as port:
        said = problems_of("h2load", port, check=True)
    assert "requests not answered with status 200" in said  # its log of every request
    assert "bytes of bodies, not 13 for each" in said  # its count of body bytes


def test_probe_refuses_a_wrong_answer():
    with sometimes_wrong() as port:
        http_load.probe(port)
        http_load.probe(port)
        with pytest.raises(http_load.BenchError, match=r"answered 201 b'Hello, world!' instead"):
            http_load.probe(port)
        http_load.probe(port)
        with pytest.raises(http_load.BenchError, match=r"answered 200 b'Hello' instead"):
            http_load.probe(port)


def test_a_wrong_round_is_reported_not_counted(capsys):
    with sometimes_wrong() as port:
        server = argparse.Namespace(name="sometimes", port=port,  # a Contender, to the rounds
                                    proc=argparse.Namespace(pid=os.getpid()),
                                    answer_bytes=http_load.probe(port))
        args = argparse.Namespace(rounds=1, duration=1, connections=4)
        runs = http_bench.measure_rounds([server], {"wrk": generator("wrk")}, args, None)
    assert runs == {("sometimes", "wrk"): {}}
    assert "round 1, sometimes by wrk: not counted: read " in capsys.readouterr().out


# -- one short run of the benchmark itself ---------------------------------------------------

def test_one_second_against_lesson_04():
    h2load()  # wrk's side is run above: here the second generator, through the whole script
    got = bench("--only", "lesson04", "--generator", "h2load", "--duration", "1", "--rounds",
                "1", "--warmup", "1", "--no-pin")
    assert got.returncode == 0 and "Traceback" not in got.stderr, got
    row = re.search(r"^lesson 04\s+h2load\s+([\d,]+)\s+[\d,]+-[\d,]+\s+1\s", got.stdout, re.M)
    assert row and int(row.group(1).replace(",", "")) > 0, got.stdout
    assert "not counted" not in got.stdout and "not measured" not in got.stdout, got.stdout
