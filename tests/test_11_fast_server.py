"""Lesson 11: every step serves the same bytes, saves the system calls it claims (counted by
the server, and the counts agree with strace's), and its workers never outlive their parent."""

import contextlib
import importlib.util
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import harness
from conftest import require_tool, still_serves

LESSON = "11_fast_server.py"
STEPS = ["naive", "send-now", "short-read", "batch-send", "recv-into", "prebuilt", "hot-loop"]
MESSAGE = bytes(range(64))
GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
ROUNDS = 20


def counts_in(line):
    return {name: int(n) for name, n in (item.split("=") for item in line.split()[2:])}


def one_at_a_time(server, send, receive, rounds=ROUNDS):
    """Round trips on one connection, each begun once the server sleeps in epoll_wait again;
    returns the server's counts once the client has left."""
    start = len(server.lines)
    with server.connect() as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(rounds):
            send(sock)
            receive(sock)
            deadline = time.monotonic() + harness.IO_TIMEOUT
            while not harness.in_epoll_wait(server):  # read from /proc, not slept on
                assert time.monotonic() < deadline, "the server never went back to epoll_wait"
    return counts_in(server.wait_for_line("system calls:", start=start))


def echo_round(sock):
    harness.send_all(sock, MESSAGE)
    assert harness.recv_exactly(sock, len(MESSAGE)) == MESSAGE


def per_round(counts, rounds=ROUNDS):
    return {name: round(n / rounds) for name, n in counts.items() if name != "accept"}


# -- the same bytes in every mode ------------------------------------------------------------

@pytest.mark.parametrize("step", STEPS)
def test_every_step_echoes_the_same_bytes_both_ways(start, step):
    for trigger in ("level", "edge"):
        server = start(LESSON, "--step", step, "--trigger", trigger)
        payloads = [os.urandom(n) for n in (1, 64, 65536, 300_000, 1_500_000)]
        assert harness.exchange(server.address, payloads, timeout=30) == payloads
        with server.connect() as sock:  # data and EOF in one report (edge: IN|RDHUP)
            with server.paused():
                harness.send_all(sock, b"last words")
                sock.shutdown(socket.SHUT_WR)
            assert harness.recv_until_eof(sock, timeout=5) == b"last words"
        still_serves(server)


@pytest.mark.parametrize("step", STEPS)
def test_every_step_answers_http_in_order(start, step):
    server = start(LESSON, "--protocol", "http", "--step", step)
    with server.connect() as sock:
        harness.send_all(sock, GET * 3 + b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n"
                         + b"GET /elsewhere HTTP/1.1\r\nHost: x\r\n\r\n")
        pending = bytearray()
        got = [harness.recv_http_response(sock, pending) for _ in range(3)]
        assert [(status, body) for status, _, body in got] == [(200, b"Hello, world!")] * 3
        assert harness.recv_http_response(sock, pending, head_only=True)[0] == 200
        assert harness.recv_http_response(sock, pending)[0] == 404
    for request, answers in ((b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" + GET, 1),
                             (GET + b"GET / HTTP/1.0\r\n\r\n" + GET, 2),
                             (GET + b"NOT A REQUEST\r\n\r\n" + GET, 2)):
        for _ in range(2):  # the second time, --step prebuilt and hot-loop answer from memory
            with server.connect() as sock:
                harness.send_all(sock, request)
                got = harness.recv_until_eof(sock)  # nothing after the last answer
            assert got.count(b"HTTP/1.1 ") == answers, got
    assert got.startswith(b"HTTP/1.1 200") and b"HTTP/1.1 400 Bad Request" in got


# -- the system calls each step saves, counted ------------------------------------------------

EXPECTED_ECHO = {"naive": dict(epoll_wait=2, epoll_ctl=2, recv=2, send=1),
                 "send-now": dict(epoll_wait=1, epoll_ctl=0, recv=2, send=1)}
LEAST = dict(epoll_wait=1, epoll_ctl=0, recv=1, send=1)


@pytest.mark.parametrize("trigger", ["level", "edge"])
def test_each_step_saves_the_echo_calls_it_claims(start, trigger):
    for step in STEPS:
        server = start(LESSON, "--step", step, "--trigger", trigger, "--count")
        counts = one_at_a_time(server, echo_round, lambda sock: None)
        expected = EXPECTED_ECHO.get(step, LEAST)
        assert per_round(counts) == expected, (step, counts)
        # exactly: the rounds' calls plus the few of the accept and the close
        assert all(0 <= counts[name] - ROUNDS * n <= 3 for name, n in expected.items()), counts
        server.stop()


def test_batch_send_answers_pipelined_requests_with_one_send(start):
    sends = {}
    for step in ("short-read", "batch-send", "hot-loop"):
        server = start(LESSON, "--protocol", "http", "--step", step, "--count")
        pending = bytearray()

        def receive(sock):
            for _ in range(16):
                assert harness.recv_http_response(sock, pending)[0] == 200

        counts = one_at_a_time(server, lambda sock: harness.send_all(sock, GET * 16), receive)
        sends[step] = per_round(counts)["send"]
        server.stop()
    assert sends == {"short-read": 16, "batch-send": 1, "hot-loop": 1}


def test_the_counts_agree_with_strace(tmp_path):
    strace = require_tool("strace")
    summary = tmp_path / "strace.txt"
    # The server is strace's child: tracing one's own child needs no special permission.
    proc = subprocess.Popen(
        [strace, "-f", "-c", "-o", str(summary), sys.executable, "-u",
         str(harness.script_path(LESSON)), "--port", "0", "--count"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        first = proc.stdout.readline().decode()
        assert first.startswith("listening on "), first
        port = int(first.rpartition(":")[2])
        server_pid = int(Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()[0])
        for _ in range(3):
            with harness.connect(("127.0.0.1", port)) as sock:
                for _ in range(ROUNDS):
                    echo_round(sock)
        os.kill(server_pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    ours = counts_in([line for line in out.decode().splitlines()
                      if line.startswith("system calls:")][-1])
    kernel = {}
    for line in summary.read_text().splitlines():
        fields = line.split()
        if fields and fields[-1] in ("recvfrom", "sendto", "epoll_ctl", "epoll_wait", "accept4"):
            kernel[fields[-1]] = int(fields[3])  # % time, seconds, usecs/call, calls
    assert ours["recv"] == kernel["recvfrom"] and ours["send"] == kernel["sendto"], (ours, kernel)
    assert ours["accept"] == kernel["accept4"]
    assert kernel["epoll_ctl"] == ours["epoll_ctl"] + 1  # + the signal wake-up's, not counted
    # + the epoll_wait interrupted by SIGTERM, which Python repeats (PEP 475)
    assert 0 <= kernel["epoll_wait"] - ours["epoll_wait"] <= 2, (ours, kernel)


# -- workers: SO_REUSEPORT, supervised --------------------------------------------------------

def workers_of(server):
    pid = server.pid
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def cpu_ns(pid):
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


def test_workers_share_the_clients_and_stop_with_the_parent(start):
    server = start(LESSON, "--processes", "2")
    workers = workers_of(server)
    assert len(workers) == 2
    for pid in workers:
        assert harness.asleep_in_epoll(pid)
    before = [cpu_ns(pid) for pid in workers]
    payloads = [os.urandom(1000 + i) for i in range(40)]
    assert harness.exchange(server.address, payloads) == payloads
    # a worker that got no client slept through it all: its CPU time would not move
    assert all(cpu_ns(pid) > used for pid, used in zip(workers, before))
    assert server.stop() == 0
    assert all(harness.gone(pid) for pid in workers)


def kill_leftovers(pids):
    """A failing test leaves nothing running either."""
    for pid in pids:
        if not harness.gone(pid):
            os.kill(pid, signal.SIGKILL)


def test_no_worker_outlives_a_killed_parent(start):
    server = start(LESSON, "--processes", "2")
    workers = workers_of(server)
    try:
        os.kill(server.pid, signal.SIGKILL)
        harness.wait_until(lambda: all(harness.gone(pid) for pid in workers), timeout=5,
                           what="every worker gone after its parent was killed")
    finally:
        kill_leftovers(workers)


def test_a_worker_that_dies_stops_the_rest(start):
    server = start(LESSON, "--processes", "2")
    first, second = workers_of(server)
    try:
        os.kill(first, signal.SIGKILL)
        assert server.proc.wait(timeout=5) == 1
        harness.wait_until(lambda: harness.gone(second), timeout=5, what="the other worker gone")
    finally:
        kill_leftovers([second])
    assert server.stderr.count("\n") == 0 and "exited" in server.stderr, server.stderr
    assert "Traceback" not in server.stderr


# -- the profile, and the flags' mistakes -------------------------------------------------------

def test_profile_is_written_on_exit_and_holds_the_calls(start, tmp_path):
    import pstats

    profile = tmp_path / "loop.prof"
    server = start(LESSON, "--profile", str(profile))
    payloads = [os.urandom(100) for _ in range(10)]
    assert harness.exchange(server.address, payloads) == payloads
    assert server.stop() == 0
    names = {name for (_, _, name) in pstats.Stats(str(profile)).stats}
    assert "<method 'send' of '_socket.socket' objects>" in names
    assert "<method 'recv_into' of '_socket.socket' objects>" in names


@pytest.mark.parametrize("args", [["--processes", "0"], ["--processes", "2", "--profile", "x"],
                                  ["--step", "fastest"], ["--trigger", "both"]])
def test_a_wrong_flag_of_this_lesson_is_one_line(args):
    result = harness.run(LESSON, *args)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "error:" in result.stderr and "Traceback" not in result.stderr


# -- the notebook's conclusion --------------------------------------------------------------
# nbval does not compare a measured cell's numbers, and a notebook stored from two runs (the
# measured cells of one kept, of another stored anew) would quote figures in its conclusion
# that the cells above do not show. Read as committed, they must be the same.

def test_the_notebooks_conclusion_quotes_the_figures_shown_above():
    path = next((harness.ROOT / "notebooks").glob("11_*.ipynb"))
    code = [cell for cell in json.loads(path.read_text())["cells"] if cell["cell_type"] == "code"]

    def shown(marker):
        """What the one code cell whose source holds `marker` printed, in one text."""
        found = [cell for cell in code if marker in "".join(cell["source"])]
        assert len(found) == 1, f"{len(found)} cells of {path.name} hold {marker!r}"
        return " ".join("".join(out.get("text", "")) for out in found[0]["outputs"])

    def figures(text, pattern):
        match = re.search(pattern, " ".join(text.split()))
        assert match, f"{pattern!r} not in {path.name}'s output: {text!r}"
        return match.groups()

    table = {line.split()[0]: line.split()[1:] for line in shown("CPU us/msg").splitlines()
             if line.split() and line.split()[0] in ("naive", "hot-loop")}
    shares = shown("the biggest:")
    ceilings = shown("threads sharing one GIL")
    said = shown("fell from the first step to the last")  # the conclusion
    stored = "make outputs NB=11 FRESH=1 stores every measured cell from one run"
    assert figures(said, r"echo from ([\d.]+) to ([\d.]+) us, HTTP from ([\d.]+) to ([\d.]+) us") \
        == (table["naive"][1], table["hot-loop"][1], table["naive"][3], table["hot-loop"][3]), stored
    assert figures(said, r"(\d+)% of the fastest server's profiled CPU time") \
        == figures(shares, r"inside epoll_wait, send and recv_into: (\d+)%"), stored
    assert figures(said, r"at most ([\d,]+) messages/s here\. Of its ([\d.]+) us per message, "
                         r"at most ([\d.]+) us are Python") \
        == figures(ceilings, r"one core: at most ([\d,]+) messages/s")[:1] + figures(
            ceilings, r"CPU per message ([\d.]+) us, of which at most ([\d.]+) us is Python"), stored


def test_count_prints_the_totals_once_when_stopped_with_clients_connected(start):
    # Each client that leaves prints the calls so far; a stop closes the rest at once, and
    # one line of totals, on exit, is what a reader wants then, not one per connection.
    server = start(LESSON, "--count")
    clients = [server.connect() for _ in range(3)]
    for client in clients:
        harness.send_all(client, b"ping")
        assert harness.recv_exactly(client, 4) == b"ping"
    harness.wait_in_epoll_wait(server)
    assert server.stop(signal.SIGINT) == 0
    for client in clients:
        client.close()
    totals = [line for line in server.lines if line.startswith("system calls:")]
    assert len(totals) == 1, server.output()


def test_a_report_of_in_and_out_at_once_sends_what_it_read(tmp_path):
    # Edge-triggered, --step naive: one report says the socket is readable and writable. Had
    # the loop sent first and read after, the bytes read would wait for an EPOLLOUT report
    # that never comes: the socket stays writable, and an edge is a change. The loop is
    # driven here by hand, one epoll_wait at a time, on real sockets.
    spec = importlib.util.spec_from_file_location("lesson11", harness.LESSONS / LESSON)
    lesson = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lesson)
    server = lesson.Server(lesson.listen("127.0.0.1", 0), step="naive", trigger="edge")
    client = socket.create_connection(server.listener.getsockname()[:2], timeout=5)
    try:
        def turn(timeout=5):
            for fd, ev in server.epoll.poll(timeout):
                if fd == server.listener.fileno():
                    server.on_accept()
                elif fd != server.wake_r.fileno():
                    server.dispatch(fd, ev)

        turn()  # the listener: accept
        (conn,) = server.conns.values()
        client.sendall(b"first")
        turn()  # read "first"; ask for EPOLLOUT
        client.sendall(b"second")
        assert select.select([conn.sock], [], [], 5)[0], "the second piece never arrived"
        turn()  # one report: IN and OUT
        turn(0.5)  # and whatever the kernel reports next
        client.settimeout(0.5)
        got = b""
        with contextlib.suppress(TimeoutError):
            while len(got) < 11:
                got += client.recv(64)
        assert got == b"firstsecond", f"only {got!r} came back: the rest waits for a report"
    finally:
        client.close()
        server.shutdown()
