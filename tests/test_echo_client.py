"""lessons/echo_client.py: the client of the terminal demos, against the real lesson servers.

What an instructor relies on in class: typed lines come back; what a server sends unasked
(exercise 01's refusal) is shown at once, and so is its close; --clients connects every
client before any sends, so that a paused server sees them all arrive in one edge; an empty
UDP datagram can be sent; every wait is bounded; a mistake gets one line and status 2.
"""

import importlib.util
import os
import select
import signal
import socket
import subprocess
import sys
import time

import pytest

import harness

CLIENT = harness.ROOT / "lessons" / "echo_client.py"
SOLUTIONS = harness.ROOT / "solutions"
BOUND = 20.0  # seconds any one client run may take before the test gives up on it


def run_client(*args, stdin=b""):
    """Run the client to completion (bounded); stdin is bytes or an open file."""
    data = stdin if isinstance(stdin, bytes) else None
    source = subprocess.PIPE if data is not None else stdin
    return subprocess.run([sys.executable, str(CLIENT), *map(str, args)], input=data,
                          stdin=None if data is not None else source, capture_output=True,
                          timeout=BOUND, cwd=str(harness.ROOT))


def start_client(*args):
    """The client in the background, its stdin a pipe left open (a user who has not typed)."""
    return subprocess.Popen([sys.executable, str(CLIENT), *map(str, args)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=str(harness.ROOT))


@pytest.fixture
def background():
    """Clients started in the background are always ended and reaped."""
    procs = []

    def _start(*args):
        proc = start_client(*args)
        procs.append(proc)
        return proc

    yield _start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=BOUND)


def wait_for_stderr(proc, text, timeout=BOUND):
    """Read the client's stderr (bounded) until `text` appears; return what was read."""
    seen = b""
    deadline = time.monotonic() + timeout
    while text.encode() not in seen:
        left = deadline - time.monotonic()
        ready, _, _ = select.select([proc.stderr], [], [], max(left, 0))
        if not ready:
            raise AssertionError(f"the client did not say {text!r} within {timeout:g} s; "
                                 f"it said {seen!r}")
        chunk = os.read(proc.stderr.fileno(), 4096)
        if not chunk:
            raise AssertionError(f"the client ended without saying {text!r}; it said {seen!r}")
        seen += chunk
    return seen.decode()


def one_line_error(result):
    """Status 2, and the error is one line, the last (a note of what was sent may precede)."""
    lines = result.stderr.decode().splitlines()
    assert result.returncode == 2, result
    assert [line for line in lines if "error: " in line] == lines[-1:], lines
    assert b"Traceback" not in result.stderr


# -- typing lines (TCP) --------------------------------------------------------------------

def test_typed_lines_come_back_and_the_end_is_clean(start):
    server = start("01_lt_echo.py")
    result = run_client("--port", server.port, stdin=b"hello\nworld\n")
    assert result.stdout == b"hello\nworld\n"
    assert "server closed the connection after echoing everything" in result.stderr.decode()
    assert result.returncode == 0


def test_typed_input_larger_than_the_buffers_from_a_regular_file(start, tmp_path):
    # A client that sent everything before reading would deadlock once both sides' buffers
    # and the server's outbox are full (32 MiB is more than they hold on loopback); and a
    # regular file as stdin is something epoll refuses (EPERM).
    payload = os.urandom(32 << 20)
    path = tmp_path / "payload.bin"
    path.write_bytes(payload)
    server = start("02_et_echo.py")
    with open(path, "rb") as stdin:
        result = run_client("--port", server.port, "--timeout", 10, stdin=stdin)
    assert result.returncode == 0, result.stderr
    assert result.stdout == payload


def test_a_refusal_is_shown_before_anything_is_typed(start, background):
    # Exercise 01's finished server, full with one client: the next one is sent REFUSAL and
    # closed. The user has typed nothing, and the client must still show both at once.
    spec = importlib.util.spec_from_file_location("connection_limit",
                                                  SOLUTIONS / "01_connection_limit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    server = start(SOLUTIONS / "01_connection_limit.py", "--max-conns", "1")
    with server.connect() as first:
        harness.send_all(first, b"ping")
        assert harness.recv_exactly(first, 4) == b"ping"  # the one slot is taken
        proc = background("--port", server.port)
        proc.wait(timeout=BOUND)  # stdin stays open: the user is still "typing"
    out, err = proc.stdout.read(), proc.stderr.read()
    assert out == module.REFUSAL
    assert err.decode().splitlines()[-1] == "server closed the connection"
    assert proc.returncode == 1


def test_after_ctrl_d_the_wait_for_the_server_is_bounded():
    # A server that accepts and never answers or closes: the wait after Ctrl-D must end.
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        result = run_client("--port", port, "--timeout", "0.3", stdin=b"anyone there?\n")
    assert result.returncode == 1
    assert "did not close the connection within 0.3 s" in result.stderr.decode()


# -- payloads (TCP) ------------------------------------------------------------------------

def connecting_to(port):
    """Whether some socket on this machine is in SYN_SENT towards 127.0.0.1:port."""
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        fields = line.split()
        if fields[2] == f"0100007F:{port:04X}" and fields[3] == "02":  # 02: SYN_SENT
            return True
    return False


def test_clients_all_connect_before_any_sends(background):
    # A listener with backlog 0 holds one finished connection; while it is not accepted,
    # the kernel drops the second client's SYN, so the client waits in its second connect
    # (SYN_SENT) and retries a second later. At that moment a client that connects all
    # before sending has sent nothing on the first connection.
    with socket.create_server(("127.0.0.1", 0), backlog=0) as listener:
        port = listener.getsockname()[1]
        proc = background("--port", port, "--bytes", 64, "--clients", 2, "--timeout", BOUND)
        harness.wait_until(lambda: connecting_to(port), timeout=BOUND,
                           what="the client waiting in its second connect")
        listener.settimeout(BOUND)
        first, _ = listener.accept()
        with first:
            readable, _, _ = select.select([first, listener], [], [], 0)
            # Bytes on the first connection before the second exists: sent too early.
            assert not (first in readable and listener not in readable), \
                "the first client sent before the second had connected"
            second, _ = listener.accept()  # the SYN retried a second later gets in now
            with second:
                wait_for_stderr(proc, "connected 2 clients")
                for sock in (first, second):  # be the echo server for both
                    sock.settimeout(BOUND)
                    sock.sendall(harness.recv_exactly(sock, 64))
                    assert harness.recv_until_eof(sock) == b""  # then the client's EOF
    out, _ = proc.communicate(timeout=BOUND)
    assert out.decode().strip() == "2 of 2 clients got all 64 bytes back intact"
    assert proc.returncode == 0


def test_a_client_sends_its_end_of_file_only_after_its_echo(background):
    # The end of file is an arrival too: sent early, it would give a stalling server one
    # more edge, sometimes merged with the data's and sometimes not. After the echo it
    # comes at the same point every time.
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(BOUND)
        proc = background("--port", listener.getsockname()[1], "--bytes", 5000,
                          "--timeout", BOUND)
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(BOUND)
            data = harness.recv_exactly(conn, 5000)
            conn.settimeout(harness.QUIET)  # a quiet window: no EOF while the echo is owed
            with pytest.raises(socket.timeout):
                conn.recv(1)
            conn.settimeout(BOUND)
            conn.sendall(data)
            assert harness.recv_until_eof(conn) == b""  # now it comes
    out, _ = proc.communicate(timeout=BOUND)
    assert out.decode().strip() == "1 of 1 client got all 5000 bytes back intact"
    assert proc.returncode == 0


@pytest.mark.parametrize("answer, verdict", [
    (lambda data: b"", "1 got nothing back before the server closed; 0 of 64 bytes came back"),
    (lambda data: data[:10], "1 got only part of the echo before the server closed; "
                             "10 of 64 bytes came back"),
    (lambda data: bytes(64), "1 got different bytes back; 64 of 64 bytes came back"),
])
def test_a_server_that_closes_early_is_described(background, answer, verdict):
    # What a crashing or careless server looks like from the client: it reads, perhaps
    # answers something, and closes.
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(BOUND)
        proc = background("--port", listener.getsockname()[1], "--bytes", 64,
                          "--timeout", BOUND)
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(BOUND)
            conn.sendall(answer(harness.recv_exactly(conn, 64)))
    out, _ = proc.communicate(timeout=BOUND)
    assert out.decode().strip() == f"0 of 1 client got all 64 bytes back intact; {verdict}"
    assert proc.returncode == 1


@pytest.mark.parametrize("skip, served", [(None, 5), ("accept", 1)])
def test_a_paused_server_sees_the_clients_arrive_in_one_edge(start, background, skip, served):
    # The instructor's demo: stop the server, let every client connect, resume it. All five
    # arrivals came while the listener was already on the ready list: one report. Lesson 03
    # draining the accept queue serves all five; with --skip-drain accept it takes one.
    server = start("03_et_drain_pitfalls.py", "--trace", *(["--skip-drain", skip] if skip else []))
    with server.paused():
        proc = background("--port", server.port, "--bytes", 64, "--clients", 5,
                          "--timeout", BOUND)
        wait_for_stderr(proc, "connected 5 clients")
    if skip:
        server.wait_for_line("close fd")  # the one accepted client is served...
        assert proc.poll() is None  # ...and the other four wait: a quiet window shows it
        time.sleep(harness.QUIET)
        proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=BOUND)
    server.stop()  # its trace is all read once it has exited (on a busy machine, not before)
    assert len(harness.accepted_fds(server.lines)) == served
    if skip:
        assert out.decode().strip() == ("interrupted: 1 of 5 clients got all 64 bytes back "
                                        "intact; 4 still waiting; 64 of 320 bytes came back")
        assert proc.returncode == 130
    else:
        assert out.decode().strip() == "5 of 5 clients got all 64 bytes back intact"
        assert proc.returncode == 0


def test_a_stalled_echo_ends_in_a_timeout_with_a_count(start):
    server = start("03_et_drain_pitfalls.py", "--skip-drain", "recv")
    result = run_client("--port", server.port, "--bytes", 10000, "--timeout", 1)
    line = result.stdout.decode().strip()
    # One arrival of 10000 bytes, one recv of 1024: nothing else comes back, every time.
    assert line == ("timed out after 1 s: 0 of 1 client got all 10000 bytes back intact; "
                    "1 still waiting; 1024 of 10000 bytes came back")
    assert result.returncode == 1


# -- UDP ---------------------------------------------------------------------------------

def test_an_empty_datagram_comes_back_from_the_finished_exercise(start):
    server = start(SOLUTIONS / "05_udp_empty_datagram.py")
    result = run_client("--udp", "--port", server.port, "--bytes", 0, "--timeout", 5)
    assert result.stdout.decode().strip() == "1 of 1 client got an empty datagram back intact"
    assert result.returncode == 0


def test_a_datagram_without_answer_is_reported():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        result = run_client("--udp", "--port", silent.getsockname()[1], "--bytes", 0,
                            "--timeout", "0.3")
        assert silent.recv(16) == b""  # the empty datagram did arrive
    assert result.stdout.decode().strip() == (
        "0 of 1 client got an empty datagram back intact; 1 got no answer within 0.3 s "
        "(UDP does not say why)")
    assert result.returncode == 1


def test_typed_datagrams_come_back_and_truncation_is_named(start):
    whole = start("05_udp_echo.py")
    result = run_client("--udp", "--port", whole.port, stdin=b"one\ntwo\n")
    assert (result.stdout, result.returncode) == (b"one\ntwo\n", 0)
    cut = start("05_udp_echo.py", "--bufsize", "16")
    long_line = b"a line much longer than sixteen bytes\n"
    result = run_client("--udp", "--port", cut.port, stdin=b"short\n" + long_line)
    assert result.stdout == b"short\n" + long_line[:16]
    assert f"the answer has 16 of the {len(long_line)} bytes sent: cut short" in \
        result.stderr.decode()
    assert result.returncode == 1
    result = run_client("--udp", "--port", cut.port, "--bytes", 100)
    assert "(the answer has 16 of the 100 bytes sent: cut short)" in result.stdout.decode()
    assert result.returncode == 1


# -- mistakes --------------------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["--clients", "3"],  # typing uses one connection
    ["--udp", "--bytes", "65508"],  # more than one IPv4 datagram carries
    ["--timeout", "0"],
    ["--bytes", "-1"],
    ["--no-such-flag"],
])
def test_a_mistake_gets_one_line_and_status_2(start, args):
    server = start("01_lt_echo.py")  # a server that would answer: the mistake alone fails
    result = run_client("--port", server.port, *args)
    one_line_error(result)
    assert args[0] in result.stderr.decode()  # the line names the flag at fault


def test_port_0_gets_one_line_and_status_2():
    one_line_error(run_client("--port", 0))  # a client cannot connect to "any free port"


def test_no_server_gets_one_line_and_status_2():
    with socket.socket() as bound_not_listening:  # keeps the port, refuses connections
        bound_not_listening.bind(("127.0.0.1", 0))
        port = bound_not_listening.getsockname()[1]
        one_line_error(run_client("--port", port, "--bytes", 10))
        one_line_error(run_client("--port", port))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:  # nothing on UDP
            probe.bind(("127.0.0.1", 0))
            udp_port = probe.getsockname()[1]
        one_line_error(run_client("--udp", "--port", udp_port, "--bytes", 1))
