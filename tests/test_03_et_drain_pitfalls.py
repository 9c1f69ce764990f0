"""Lesson 03: each broken drain stalls exactly as described, the correct one never does,
level-triggering forgives the single read, and a read budget stops one client starving
the others. Every stall is detected by a short quiet window (harness.QUIET), never a sleep.
"""

import os
import re
import select
import signal
import statistics
import time

import pytest

import harness

LESSON = "03_et_drain_pitfalls.py"
RECV_CHUNK = 1024  # the lesson's SKIP_RECV_CHUNK
SEND_CHUNK = 4096  # the lesson's SKIP_SEND_CHUNK
MiB = 1 << 20
BUDGET = 16 * 1024
WORK = "10"  # microseconds of CPU per KiB read, for the starvation measurement


def quiet(socks, window=harness.QUIET):
    """True if none of socks receives anything for `window` seconds (a stall)."""
    readable, _, _ = select.select(socks, [], [], window)
    return not readable


# -- the three situations, as functions of a running server --------------------------------

def burst_of_bytes(server):
    """One write of 10,000 bytes; returns what came back before a quiet window, then after
    a one-byte nudge."""
    payload = os.urandom(10_000)
    with server.connect() as sock:
        harness.send_all(sock, payload)
        first = harness.recv_until_quiet(sock)
        harness.send_all(sock, b"!")
        second = harness.recv_until_quiet(sock)
    return payload, first, second


def burst_of_clients(server, count=5):
    """`count` clients connect and send while the server is stopped (one listener edge);
    returns which of them were answered, then which after one more client connected."""
    clients = []
    try:
        with server.paused():
            for i in range(count):
                sock = server.connect()
                clients.append(sock)
                harness.send_all(sock, b"client %d" % i)
        answered = _answered(clients)
        late = server.connect()
        clients.append(late)
        harness.send_all(late, b"late")
        answered_after = _answered(clients)
        return answered, answered_after
    finally:
        for sock in clients:
            sock.close()


def _answered(clients):
    """Indices of the clients that receive something before the line goes quiet."""
    got = []
    while True:
        readable, _, _ = select.select(clients, [], [], harness.QUIET)
        if not readable:
            return sorted(got)
        for sock in readable:
            data = sock.recv(64)
            assert data, "a client was closed unexpectedly"
            got.append(clients.index(sock))


def large_echo(server, size=50_000):
    """One write of `size` bytes while the client keeps reading; returns the echo received
    before a quiet window."""
    payload = os.urandom(size)
    with server.connect() as sock:
        harness.send_all(sock, payload)
        echoed = harness.recv_until_quiet(sock)
    assert payload.startswith(echoed)
    return payload, echoed


# -- each pitfall stalls as described -------------------------------------------------------

def test_skip_drain_recv_stalls_after_one_chunk_and_a_nudge_releases_one_more(start):
    server = start(LESSON, "--skip-drain", "recv")
    payload, first, second = burst_of_bytes(server)
    assert first == payload[:RECV_CHUNK], f"echoed {len(first)} of 10000, expected a stall"
    # the nudge makes a new edge: one more chunk of the bytes that were waiting all along
    assert second == payload[RECV_CHUNK:2 * RECV_CHUNK]


def test_skip_drain_accept_serves_one_of_a_burst_until_another_client_comes(start):
    server = start(LESSON, "--skip-drain", "accept")
    answered, answered_after = burst_of_clients(server, count=5)
    assert answered == [0], answered  # one accept for one edge: the first in the queue
    # a sixth client makes a new edge, and the next one in the queue (not it) is accepted
    assert answered_after == [1], answered_after


def test_skip_drain_send_stops_part_way_although_the_client_reads(start):
    server = start(LESSON, "--skip-drain", "send")
    payload, echoed = large_echo(server)
    # one chunk sent at once, one more for the EPOLLOUT that epoll_ctl(MOD) reports; then
    # the send buffer never fills, so no edge comes
    assert len(echoed) == 2 * SEND_CHUNK, len(echoed)


# -- the correct server, and level-triggering, never stall ----------------------------------

@pytest.mark.parametrize("mode", [[], ["--level", "--skip-drain", "recv"]],
                         ids=["default", "level-triggered-skip-recv"])
def test_no_stall_for_a_burst_of_bytes(start, mode):
    server = start(LESSON, *mode)
    payload, first, second = burst_of_bytes(server)
    assert first == payload and second == b"!"


@pytest.mark.parametrize("mode", [[], ["--level", "--skip-drain", "accept"]],
                         ids=["default", "level-triggered-skip-accept"])
def test_no_stall_for_a_burst_of_clients(start, mode):
    server = start(LESSON, *mode)
    answered, answered_after = burst_of_clients(server, count=5)
    assert answered == [0, 1, 2, 3, 4] and answered_after == [5]


@pytest.mark.parametrize("mode", [[], ["--level", "--skip-drain", "send"]],
                         ids=["default", "level-triggered-skip-send"])
def test_no_stall_for_a_large_echo(start, mode):
    server = start(LESSON, *mode)
    payload, echoed = large_echo(server)
    assert echoed == payload


@pytest.mark.parametrize("mode", [[], ["--budget", str(BUDGET)], ["--budget", "1"]],
                         ids=["default", "budget", "budget-1-byte"])
def test_correct_modes_echo_many_clients_and_large_payloads(start, mode):
    server = start(LESSON, *mode)
    payloads = [os.urandom(1000 + 37 * i) for i in range(50)] if mode[-1:] == ["1"] else \
        [os.urandom(4 * MiB)] + [os.urandom(1000 + i) for i in range(100)]
    assert harness.exchange(server.address, payloads, timeout=30) == payloads
    got = harness.exchange(server.address, [payloads[0]], half_close=True, timeout=30)[0]
    assert got == payloads[0]  # half-close: everything owed still arrives, then EOF


@pytest.mark.parametrize("mode", [[], ["--budget", str(BUDGET)]], ids=["default", "budget"])
def test_a_slow_reader_gets_everything_through_many_throttles(start, mode):
    # Write first, then read, in each event: a throttle lifted by a send is followed by a
    # read (or by a turn on the server's own ready list), never by silence.
    server = start(LESSON, "--trace", *mode)
    payload, echoed = harness.slow_reader(server)  # 24 MiB, the echo read 1 KiB at a time
    assert echoed == payload
    throttles = [c for c in harness.interest_changes(server.lines) if "IN" not in c[2]]
    assert len(throttles) >= 2, "the test never made the server stop reading"


# -- the opposite pitfall: starvation, and the budget that fixes it -------------------------

def wait_behind_a_backlog(server, trials=3):
    """A second client's wait while the first has several MiB queued.

    Both clients are connected; the server is stopped; the first client fills every buffer
    on its way (the kernel takes several MiB), the second sends "ping"; the server goes on.
    Returns per trial (bytes read from the first client before the ping was answered,
    seconds the ping waited), from the server's --trace.
    """
    streamer, pinger = server.connect(), server.connect()
    try:
        def accepted():
            fds = [int(line.split()[-1]) for line in server.lines if line.startswith("accept fd")]
            return fds if len(fds) == 2 else None

        streamer_fd, pinger_fd = harness.wait_until(accepted, what="both clients accepted")
        results = []
        for _ in range(trials):
            # A round trip on the second client, and its trace line: everything the server
            # did before is in server.lines, so what follows `mark` belongs to this trial.
            mark = len(server.lines)
            harness.send_all(pinger, b"sync!!")
            assert harness.recv_exactly(pinger, 6) == b"sync!!"
            server.wait_for_line(f"read fd {pinger_fd}: 6 bytes", start=mark)
            with server.paused():
                mark = len(server.lines)
                backlog = harness.fill_without_reading(streamer, quiet=0.05)
                harness.send_all(pinger, b"ping")
                began = time.monotonic()
            assert harness.recv_exactly(pinger, 4) == b"ping"
            waited = time.monotonic() - began
            server.wait_for_line(f"read fd {pinger_fd}: 4 bytes", start=mark)
            assert len(harness.recv_exactly(streamer, backlog, timeout=30)) == backlog
            results.append((_bytes_before(server.lines[mark:], streamer_fd, pinger_fd), waited))
        return results
    finally:
        streamer.close()
        pinger.close()


def _bytes_before(lines, streamer_fd, pinger_fd):
    taken = 0
    for line in lines:
        m = re.match(r"read fd (\d+): (\d+) bytes", line)
        if m and int(m[1]) == pinger_fd:
            return taken
        if m and int(m[1]) == streamer_fd:
            taken += int(m[2])
    raise AssertionError("the ping was never read")


def test_a_read_budget_stops_one_client_starving_another(start):
    greedy = wait_behind_a_backlog(start(LESSON, "--trace", "--work", WORK))
    fair = wait_behind_a_backlog(start(LESSON, "--trace", "--work", WORK,
                                       "--budget", str(BUDGET)))
    # greedy: the first client's whole backlog (several MiB) before the ping, every time
    assert all(taken >= MiB for taken, _ in greedy), greedy
    # fair: exactly one budget from the first client, then the ping's turn
    assert all(taken == BUDGET for taken, _ in fair), fair
    greedy_wait = statistics.median(w for _, w in greedy)
    fair_wait = statistics.median(w for _, w in fair)
    assert fair_wait * 5 < greedy_wait, (greedy, fair)


def test_budget_server_uses_no_cpu_when_idle(start):
    server = start(LESSON, "--budget", str(BUDGET))
    payload = os.urandom(MiB)
    assert harness.echo(server.address, payload, timeout=30) == payload  # the list empties
    assert server.asleep_in_epoll(), "the server never went back to epoll_wait"
    assert server.cpu_seconds_over(0.5) <= 0.02


# -- what every lesson script promises ------------------------------------------------------

@pytest.mark.parametrize("mode", [[], ["--skip-drain", "recv"], ["--skip-drain", "accept"],
                                  ["--skip-drain", "send"], ["--budget", "4096"]])
def test_rude_clients_do_not_stop_any_variant(start, mode):
    server = start(LESSON, *mode)
    for i in range(10):
        sock = server.connect()
        harness.send_all(sock, os.urandom(64 * 1024 if i % 2 else 10))
        harness.reset(sock)  # with data unread and the echo on its way
    never_reads = server.connect()
    harness.fill_without_reading(never_reads, quiet=0.1)
    assert server.rss_bytes() < 64 * MiB
    if mode != ["--skip-drain", "accept"]:  # that one may leave a newcomer queued: its bug
        with server.connect() as sock:  # a fresh client is still served
            harness.send_all(sock, b"\xff\xfe not utf-8")
            assert harness.recv_exactly(sock, 12) == b"\xff\xfe not utf-8"
    never_reads.close()
    assert server.alive() and "Traceback" not in server.output()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_the_server_cleanly(start, signum):
    server = start(LESSON, "--budget", str(BUDGET))
    clients = [server.connect() for _ in range(3)]
    harness.echo(server.address, b"busy")
    began = time.monotonic()
    server.send_signal(signum)
    server.proc.wait(timeout=5)
    assert time.monotonic() - began < 1.0
    assert server.proc.returncode == 0 and "Traceback" not in server.output()
    for sock in clients:
        assert harness.recv_until_eof(sock, timeout=2) == b""
        sock.close()


@pytest.mark.parametrize("args", [["--skip-drain", "all"], ["--budget", "-1"],
                                  ["--work", "-5"], ["--recv-size", "0"]])
def test_bad_flags_are_one_clear_line(args):
    result = harness.run(LESSON, *args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "error:" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
