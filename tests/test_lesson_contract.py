"""What every lesson script promises (how it starts, listens, stops, fails, idles, and runs
out of file descriptors), checked for each of them: the same promise, one test, every lesson."""

import re
import resource
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import harness
import lesson_list  # tools/lesson_list.py: the one list of lessons, with each one's kind

LESSONS = lesson_list.servers()  # every lesson that is a server (not the demonstrations)
each_lesson = pytest.mark.parametrize("lesson", LESSONS)


@each_lesson
def test_listens_on_loopback_unless_told_otherwise(start, lesson):
    server = start(lesson, host=None)  # no --host: the script's default
    assert server.lines[0] == f"listening on 127.0.0.1:{server.port}" and server.port > 0


@each_lesson
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_it_with_status_0_within_a_second(start, lesson, signum):
    server = start(lesson)
    began = time.monotonic()
    server.send_signal(signum)
    assert server.proc.wait(timeout=5) == 0, server.output()
    assert time.monotonic() - began < 1.0
    assert "Traceback" not in server.output()


@each_lesson
def test_port_in_use_is_one_clear_line_and_status_2(lesson):
    with harness.free_port_in_use() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        port = tcp.getsockname()[1]
        udp.bind(("127.0.0.1", port))  # taken for TCP and UDP lessons alike
        result = harness.run(lesson, "--port", str(port))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert f"127.0.0.1:{port}" in result.stderr and "--port 0" in result.stderr
    assert "Traceback" not in result.stderr


@each_lesson
@pytest.mark.parametrize("args", [["--port", "http"], ["--port", "70000"], ["--frobnicate"]])
def test_a_bad_flag_is_one_clear_line_and_status_2(lesson, args):
    result = harness.run(lesson, *args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert "error:" in result.stderr and "Traceback" not in result.stderr


@each_lesson
def test_help_names_host_and_port(lesson):
    result = harness.run(lesson, "--help")
    assert result.returncode == 0 and "--host" in result.stdout and "--port" in result.stdout


@each_lesson
def test_without_epoll_it_says_so(lesson):
    # The same script on a Python without select.epoll, as on macOS or Windows.
    code = ("import runpy, select, sys; del select.epoll; sys.argv = [sys.argv[0], '--port', '0'];"
            f"runpy.run_path({str(harness.script_path(lesson))!r}, run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=10, stdin=subprocess.DEVNULL)
    assert result.returncode == 2
    assert "epoll exists only on Linux" in result.stderr and "Traceback" not in result.stderr


@each_lesson
def test_idle_it_sleeps_in_epoll_wait(start, lesson):
    server = start(lesson)
    assert server.asleep_in_epoll(), "the server never slept in epoll_wait"
    before = server.cpu_seconds()
    time.sleep(0.5)  # a measuring window, not synchronisation
    assert server.cpu_seconds() - before <= 0.02


@each_lesson
def test_standard_library_only(lesson):
    source = (harness.LESSONS / lesson).read_text()
    imported = {line.split()[1].split(".")[0] for line in source.splitlines()
                if line.startswith(("import ", "from "))}
    assert imported <= set(sys.stdlib_module_names), imported - set(sys.stdlib_module_names)


# -- the trace: what woke the loop ---------------------------------------------------------

def prints_wake_lines(lesson):
    """Does the lesson's --trace print a "wake ..." line per wake-up (what harness.wakes reads)?"""
    return '"wake "' in (harness.LESSONS / lesson).read_text(encoding="utf-8")


TRACED_LESSONS = [lesson for lesson in lesson_list.scripts("echo") if prints_wake_lines(lesson)]


def listening_fds(server):
    """The server's fd numbers for its listening socket: the socket that /proc/net/tcp lists
    as LISTEN (state 0A) on the server's port, found by its inode among /proc/PID/fd."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            local, state, inode = row.split()[1], row.split()[3], row.split()[9]
            if state == "0A" and int(local.rpartition(":")[2], 16) == server.port:
                inodes.add(f"socket:[{inode}]")
    fds = Path(f"/proc/{server.pid}/fd")
    return {fd.name for fd in fds.iterdir() if str(fd.readlink()) in inodes}


@pytest.mark.parametrize("lesson", TRACED_LESSONS)
def test_the_trace_names_the_signal_wake_up_and_numbers_only_sockets_it_serves(start, lesson):
    # Ctrl-C wakes the loop through the socket that signal.set_wakeup_fd writes to, which no
    # client ever sees: the trace calls it "signal". Every number in a wake line is a socket
    # a learner can point at: the listener or a client the trace said it accepted.
    server = start(lesson, "--trace")

    def lines():  # lesson 08 begins each line with the thread that wrote it: "thread 0: "
        return [re.sub(r"^thread \d+: ", "", line) for line in server.lines]

    with server.connect() as client:
        harness.send_all(client, b"ping")
        assert harness.recv_exactly(client, 4) == b"ping"
        sockets = listening_fds(server) | {str(fd) for fd in harness.accepted_fds(lines())}
        harness.wait_in_epoll_wait(server)
        assert server.stop(signal.SIGINT) == 0, server.output()  # the client still connected
    wakes = harness.wakes(lines())
    assert wakes and "signal" in wakes[-1], f"the last wake-up does not name the signal:\n" \
        f"{server.output()}"
    numbered = {name for wake in wakes for name in wake if name != "signal"}
    assert numbered <= sockets, f"fd {sorted(numbered - sockets)} is neither the listener " \
        f"nor an accepted client:\n{server.output()}"



# -- out of file descriptors ---------------------------------------------------------------

TCP_LESSONS = lesson_list.scripts("echo", "http")  # every lesson that accepts connections
FD_LIMIT = 64  # the server's soft RLIMIT_NOFILE in the exhaustion test
QUEUED = 20  # clients beyond what the server can hold: they wait in the kernel's queue
# One request every TCP lesson answers: the echo lessons send it back, the HTTP one says 200.
REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def is_answer(data):
    """True once `data` is a complete answer to REQUEST: its echo, or an HTTP response."""
    if data == REQUEST:
        return True
    head, end, body = data.partition(b"\r\n\r\n")
    length = re.search(rb"\r\nContent-Length: (\d+)\r\n", head + b"\r\n")
    return bool(end and head.startswith(b"HTTP/1.1 200 ") and length
                and len(body) == int(length.group(1)))


class Clients:
    """Many clients of one server, each sending REQUEST once and collecting its answer."""

    def __init__(self, server):
        self.server, self.socks, self.got = server, [], []

    def open(self, count):
        for _ in range(count):
            sock = self.server.connect()
            self.socks.append(sock)
            self.got.append(bytearray())
            harness.send_all(sock, REQUEST)

    def answered(self):
        return {i for i, data in enumerate(self.got) if is_answer(data)}

    def read_until(self, done, timeout=harness.IO_TIMEOUT):
        """Read from the open clients until done(answered) holds; Stalled at the deadline."""
        deadline = time.monotonic() + timeout
        while not done(self.answered()):
            left = deadline - time.monotonic()
            if left <= 0:
                waiting = len(self.socks) - len(self.answered())
                raise harness.Stalled(f"{waiting} clients still unanswered after {timeout:g} s")
            waiting = [s for i, s in enumerate(self.socks)
                       if s.fileno() >= 0 and i not in self.answered()]
            for sock in select.select(waiting, [], [], min(left, 0.5))[0]:
                data = sock.recv(4096)
                assert data, "the server closed a client it had not answered"
                self.got[self.socks.index(sock)] += data
        return self.answered()

    def everyone_answered(self):
        self.read_until(lambda answered: len(answered) == len(self.socks))

    def close(self, indices):
        for i in indices:
            self.socks[i].close()

    def close_all(self):
        self.close(range(len(self.socks)))


@pytest.mark.parametrize("lesson", TCP_LESSONS)
def test_out_of_fds_no_spin_and_queued_clients_served_later(start, lesson):
    # accept() that fails with EMFILE leaves the client queued and the listener ready: a
    # level-triggered loop is woken again at once, forever (a spin), and an edge-triggered
    # one is never told again about the clients already queued (a stall).
    server = start(lesson)
    _, hard = resource.prlimit(server.pid, resource.RLIMIT_NOFILE)
    resource.prlimit(server.pid, resource.RLIMIT_NOFILE, (FD_LIMIT, hard))
    own_fds = server.open_fds()  # listener, epoll, signal wake-up, stdio...
    room = FD_LIMIT - own_fds
    clients = Clients(server)
    try:
        clients.open(room + QUEUED)
        answered = clients.read_until(lambda answered: len(answered) >= room)
        assert len(answered) == room and server.open_fds() == FD_LIMIT  # the rest queue

        # A measuring window: out of fds, the server has nothing to do. A spin gets its
        # share of a CPU even on a busy machine, far more than this bound.
        cpu = server.cpu_seconds_over(0.5)
        assert cpu <= 0.02, f"{cpu:.2f} CPU seconds in 0.5 s while out of fds: a spin"

        # Clients leave: the fds they free go to the clients still queued.
        clients.close(sorted(answered)[:QUEUED + 5])
        clients.everyone_answered()
    finally:
        clients.close_all()
    harness.wait_until(lambda: server.open_fds() == own_fds, what="every client closed")

    # Out of fds with no client of ours that could leave (as when the whole system is out,
    # ENFILE); then fds come free elsewhere (here: the limit goes up). No close tells the
    # server, yet the clients queued meanwhile must be served.
    resource.prlimit(server.pid, resource.RLIMIT_NOFILE, (own_fds, hard))
    late = Clients(server)
    try:
        late.open(QUEUED)
        assert not select.select(late.socks, [], [], harness.QUIET)[0]  # out of fds: queued
        resource.prlimit(server.pid, resource.RLIMIT_NOFILE, (FD_LIMIT, hard))
        late.everyone_answered()
    finally:
        late.close_all()
    assert server.alive()
