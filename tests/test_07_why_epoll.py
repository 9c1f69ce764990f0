"""Lesson 07: the three back-ends behave the same, the select back-end stays below FD_SETSIZE,
and at the fd limit the default neither spins nor stalls while --naive-accept does one or the
other. Each message costs one wait, one recv and one send on every back-end: the notebook's
measurement rests on it."""

import os
import resource
import select
import signal
import sys

import pytest

import harness
from conftest import still_serves

sys.path.insert(0, str(harness.ROOT / "exercises" / "checks"))
import hostile  # noqa: E402  the lessons' rude clients, shared with the exercise checks

LESSON = "07_why_epoll.py"
BACKENDS = ["select", "poll", "epoll"]
FD_SETSIZE = 1024
MESSAGE = b"x" * 64


@pytest.fixture(autouse=True)
def room_for_clients():
    """A thousand clients and more in this process, and in the servers it starts (they
    inherit the limit): the soft fd limit raised for the test, then put back."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4096 if hard == resource.RLIM_INFINITY else min(4096, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
def any_wait(monkeypatch):
    """The harness (and the hostile clients through it) wait for a server to sleep in
    epoll_wait; with this, sleeping in select or poll (poll_schedule_timeout) counts too."""
    monkeypatch.setattr(harness, "SLEEPING_IN", harness.SLEEPING_IN + ("poll_schedule_timeout",))


def send_each(socks):
    for sock in socks:
        harness.send_all(sock, MESSAGE)


def collect(socks, quiet=None, timeout=harness.IO_TIMEOUT):
    """How many of `socks` got MESSAGE back: all of them (or Stalled at the timeout), or
    with `quiet`, as many as did before nothing came for that long."""
    waiting = {sock.fileno(): sock for sock in socks}
    got = {fd: b"" for fd in waiting}
    done = 0
    with select.epoll() as ep:  # the clients' own numbers pass 1024 here
        for fd in waiting:
            ep.register(fd, select.EPOLLIN)
        while done < len(socks):
            events = ep.poll(timeout if quiet is None else quiet)
            if not events:
                if quiet is not None:
                    return done
                raise harness.Stalled(f"{done} of {len(socks)} echoes in {timeout:g} s")
            for fd, _ in events:
                data = waiting[fd].recv(1 << 16)
                assert data, "the server closed a client it had not echoed"
                got[fd] += data
                if got[fd] == MESSAGE:
                    done += 1
                    ep.unregister(fd)
    return done


# -- one loop, three back-ends -------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_survives_the_hostile_clients(any_wait, backend):
    # A reset mid-send, a client that never reads, a half-close owed a large echo, garbage:
    # what the exercise checks run, the same clients for each back-end.
    hostile.tcp_echo(LESSON, "--backend", backend)


def calls_now(server):
    """The server's own count of its calls so far (SIGUSR1 makes it print them)."""
    seen = len(server.lines)
    server.send_signal(signal.SIGUSR1)
    line = server.wait_for_line("calls: ", start=seen)
    return {name: int(count) for count, name in
            (item.split() for item in line[len("calls: "):].split(", "))}


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_wait_one_recv_one_send_per_message(start, backend):
    # Levels, one recv per report: the busy client's messages each cost the server exactly
    # one wait, so the notebook's cost per message is the cost of a wait.
    server = start(LESSON, "--backend", backend)
    messages = 40
    with server.connect() as busy:
        before = calls_now(server)
        for _ in range(messages):
            harness.send_all(busy, MESSAGE)
            assert harness.recv_exactly(busy, len(MESSAGE)) == MESSAGE
        after = calls_now(server)
    made = {name: after[name] - before[name] for name in after}
    # one more wait: the one that woke for the second SIGUSR1
    assert made == {"wait": messages + 1, "accept": 0, "recv": messages, "send": messages}, made



@pytest.mark.parametrize("backend", BACKENDS)
def test_trace_names_the_signal_wakeup(start, backend):
    # A stop by Ctrl-C wakes the loop through the self-pipe: the trace says "signal=IN",
    # where a bare fd number would look like one more client; the sockets keep their numbers.
    server = start(LESSON, "--backend", backend, "--trace")
    with server.connect() as sock:
        harness.send_all(sock, MESSAGE)
        assert harness.recv_exactly(sock, len(MESSAGE)) == MESSAGE
        client = harness.accepted_fds([server.wait_for_line("accept fd ")])[0]
        assert server.stop(signal.SIGINT) == 0
    wakes = harness.wakes(server.lines)
    assert wakes[-1] == {"signal": {"IN"}}, server.lines
    assert harness.reports_for(server.lines, client) >= 1, server.lines
    numbered = {key for wake in wakes for key in wake if key != "signal"}
    assert len(numbered) == 2 and str(client) in numbered, server.lines  # listener, client

def test_edge_is_for_epoll_only():
    result = harness.run(LESSON, "--backend", "poll", "--edge")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "--edge needs --backend epoll" in result.stderr and "Traceback" not in result.stderr


# -- the FD_SETSIZE wall -------------------------------------------------------------------

def test_select_backend_keeps_below_fd_setsize(start):
    # An fd of 1024 or more in the select back-end would make select() raise ValueError and
    # end the server. It must instead treat the wall like running out of fds: clients wait
    # in the queue (no spin), and are served when others leave.
    server = start(LESSON, "--backend", "select")
    room = FD_SETSIZE - server.open_fds()
    clients = [server.connect() for _ in range(FD_SETSIZE + 20)]
    try:
        served, waiting = clients[:room], clients[room:]  # the accept queue is FIFO
        send_each(clients)
        assert collect(served) == room
        assert collect(waiting, quiet=harness.QUIET) == 0, "an fd above 1023 in select?"
        assert server.cpu_seconds_over(0.3) < 0.05  # a measuring window: no spin
        assert server.alive(), server.output()
        for sock in served[:50]:
            sock.close()
        assert collect(waiting) == len(waiting)
    finally:
        for sock in clients:
            sock.close()
    still_serves(server)


@pytest.mark.parametrize("backend", ["poll", "epoll"])
def test_poll_and_epoll_go_past_fd_1023(start, backend):
    server = start(LESSON, "--backend", backend)
    clients = [server.connect() for _ in range(FD_SETSIZE + 20)]
    try:
        send_each(clients)
        assert collect(clients) == len(clients)
        assert server.open_fds() > FD_SETSIZE + 20
    finally:
        for sock in clients:
            sock.close()
    still_serves(server)


# -- at the fd limit -----------------------------------------------------------------------

FD_LIMIT, QUEUED = 64, 10


def at_the_limit(server):
    """Give the server a soft limit of FD_LIMIT fds, connect as many clients as it can hold
    and QUEUED more, each sending a message; then ten of the served ones leave. Returns
    (samples of the server's state while the QUEUED waited, how many of them were echoed
    once the others left, how many after one more client arrived)."""
    _, hard = resource.prlimit(server.pid, resource.RLIMIT_NOFILE)
    resource.prlimit(server.pid, resource.RLIMIT_NOFILE, (FD_LIMIT, hard))
    room = FD_LIMIT - server.open_fds()
    clients = [server.connect() for _ in range(room + QUEUED)]
    try:
        served, waiting = clients[:room], clients[room:]  # the accept queue is FIFO
        send_each(clients)
        assert collect(served) == room
        samples = harness.activity(server, 0.3)  # a measuring window
        for sock in served[:QUEUED]:
            sock.close()
        later = collect(waiting, quiet=harness.QUIET)
        after_arrival = later
        if later < QUEUED:
            clients.append(server.connect())  # a new arrival
            after_arrival = later + collect(waiting, quiet=harness.QUIET)
    finally:
        for sock in clients:
            sock.close()
    return samples, later, after_arrival


def asleep(samples):
    states = [state for _, _, state in samples]
    return states.count("S") >= len(states) - 1 and samples[-1][1] <= 0.02


@pytest.mark.parametrize("args", [["--backend", "select"], ["--backend", "poll"],
                                  ["--backend", "epoll"], ["--edge"]],
                         ids=["select", "poll", "epoll", "epoll-edge"])
def test_out_of_fds_it_pauses_accept(start, args):
    # The fix: no spin while out of fds, and the queued clients served once fds are free.
    server = start(LESSON, *args)
    samples, later, _ = at_the_limit(server)
    assert asleep(samples), f"busy while out of fds: {samples}"
    assert later == QUEUED, f"{QUEUED - later} queued clients not served after others left"
    still_serves(server)


def test_naive_accept_spins_when_level_triggered(start):
    server = start(LESSON, "--naive-accept")
    samples, later, _ = at_the_limit(server)
    states = {state for _, _, state in samples}
    assert states == {"R"} and samples[-1][1] > 0, f"not a spin: {samples}"
    assert later == QUEUED  # the spin does accept them once fds are free
    still_serves(server)


def test_naive_accept_stalls_when_edge_triggered(start):
    server = start(LESSON, "--edge", "--naive-accept")
    samples, later, after_arrival = at_the_limit(server)
    assert asleep(samples)
    assert later == 0, "the queued clients were served without a new arrival: no stall"
    assert after_arrival == QUEUED  # a new arrival is a new edge: the queue is drained
    still_serves(server)
