"""The lessons' hostile clients, which every check runs once its own test has passed.

Nothing a client does may crash a lesson server, make it lose what it owes, make it hold
more and more memory, or stop it serving the others (the lessons' promise). Each client here
does one of those rude things: reset the connection mid-send, send and never read, half-close
and read, send garbage bytes; over UDP, send the largest datagram there is. After each one
the server must be back asleep in epoll_wait, alive, and serving a new client. If not,
BrokenBy says which client did what, and what went wrong, in one sentence.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import time

import harness

IO = 5.0  # seconds for any one client operation; loopback answers in well under 1 ms
SETTLE = 5.0  # seconds a server may take to deal with a client and sleep in epoll_wait again
SMALL = 64 * 1024  # fits in the kernel's socket buffers while the server is paused
LARGE = 200_000  # more than the socket buffers hold at first: the echo takes several turns
# More than the kernel takes for a reader with a 4 KiB window, by less than the lessons'
# HIGH_WATER (1 MiB): when the server reads EOF it still holds this much of the echo itself,
# every run, and must not drop it.
OWED_AT_EOF = 768 * 1024
GARBAGE = bytes(range(256)) * 4  # every byte value: NUL, control bytes, invalid UTF-8
BIGGEST_DATAGRAM = 65_507  # over IPv4: 65,535 less the IP and UDP headers
# A client that never reads: the lessons stop reading from it at HIGH_WATER (1 MiB), so the
# kernel pushes back once its buffers are full too, here after about 10 MiB of echo (1.4 MiB
# of pipelined requests from a client with a 64 KiB send buffer). A server that takes
# several times that does not stop.
ECHO_LIMIT = 64 << 20
REQUESTS_LIMIT = 8 << 20  # each answer is 4 times its request: 32 MiB of answers
REQUESTS_SNDBUF = 64 * 1024  # keeps the kernel's share, and the time to fill it, small
FILL_TIME = 10.0  # seconds a filling client may send for

GET = b"GET / HTTP/1.1\r\nHost: check\r\n\r\n"


class BrokenBy(AssertionError):
    """A hostile client broke the server; the message says what the client did and how."""


# -- what a client may not do to a server -------------------------------------------------

def crash_summary(server: harness.Server) -> str:
    """The server has exited: its exception and where, from what it printed, in one line."""
    status = server.stop()  # collects the exit status and everything it wrote
    lines = [line for line in server.stderr.splitlines() if line.strip()]
    if not any(line.startswith("Traceback") for line in lines):
        return f"it exited with status {status}"
    where = ""
    for line in reversed(lines):
        text = line.strip()
        if text.startswith('File "'):  # File "/path/03_drain_recv.py", line 158, in close
            _, _, rest = text.partition(", line ")
            number, _, function = rest.partition(", in ")
            where = f" (line {number}, in {function})"
            break
    return lines[-1].strip() + where


DYING = 1.0  # seconds a server that has crashed may take to print its traceback and exit


def exits(server: harness.Server, timeout: float) -> bool:
    """Wait (bounded) until the server has exited; whether it has."""
    with contextlib.suppress(harness.Stalled):
        harness.wait_until(lambda: harness.gone(server.pid), timeout=timeout,
                           what="a crashed server exiting")
    return harness.gone(server.pid)


@contextlib.contextmanager
def crash_first(server: harness.Server, did: str):
    """A failure inside the block is reported as the crash it is when the server died: one
    message, its exception first (check.py adds the last lines the server printed), not a
    symptom of the crash such as an echo that never came or a wait it never went back to."""
    try:
        yield
    except (AssertionError, harness.Stalled, OSError):
        # A client sees a dying server's sockets closed before the server has exited.
        if exits(server, DYING):
            raise AssertionError(f"{did}, and your server crashed: "
                                 f"{crash_summary(server)}") from None
        raise


def alive(server: harness.Server, did: str) -> None:
    """Once the server has dealt with what the client did (it sleeps in epoll_wait again,
    or has died), it must be alive. A crash is seen here even when the client saw only an
    early EOF: the kernel closes a dying process's sockets before its exit is reported."""
    def settled():
        return harness.gone(server.pid) or harness.asleep_in_epoll(server.pid, timeout=0)
    try:
        harness.wait_until(settled, timeout=SETTLE, what="the server back in epoll_wait")
    except harness.Stalled:
        raise BrokenBy(f"{did} left your server busy: it was not back asleep in epoll_wait "
                       f"within {SETTLE:g} s (a loop that does not end?)") from None
    if not server.alive():
        raise BrokenBy(f"{did} crashed your server: {crash_summary(server)}")


def survive(server: harness.Server, did: str, serve_newcomer) -> None:
    """After the client that `did` something: alive, and still serving others."""
    alive(server, did)
    try:
        serve_newcomer(server)
    except (harness.Stalled, OSError, AssertionError) as e:
        alive(server, did)
        raise BrokenBy(f"{did} stopped your server serving others: {e}") from None
    alive(server, did)


def bounded(server: harness.Server, did: str, sock: socket.socket, send_round,
            limit: int) -> int:
    """Send on sock and never read, until the server stops taking bytes; return how many.

    `send_round(sock, most)` sends until the socket stays unwritable for a moment and
    returns the bytes sent, or raises AssertionError past `most`. A moment unwritable may
    only mean a busy server, so it counts as the server's refusal only once the server
    sleeps in epoll_wait and the socket is still unwritable. Past `limit` bytes, BrokenBy.
    """
    taken = 0
    deadline = time.monotonic() + FILL_TIME
    try:
        while time.monotonic() < deadline:
            taken += send_round(sock, limit - taken)
            if not server.alive() or (harness.asleep_in_epoll(server.pid, timeout=0)
                                      and not select.select([], [sock], [], 0)[1]):
                break
        else:
            raise AssertionError
    except AssertionError:
        alive(server, did)
        raise BrokenBy(f"{did} made your server's memory grow without bound: it took over "
                       f"{limit >> 20} MiB and went on taking; stop reading from a client "
                       "while too much output waits for it") from None
    alive(server, did)
    return taken


# -- TCP echo servers (lessons 01 to 03) ---------------------------------------------------

def echo_newcomer(server: harness.Server) -> None:
    payload = os.urandom(LARGE)
    try:
        got = harness.echo(server.address, payload, timeout=IO)
    except harness.Stalled as e:
        raise AssertionError(f"a new client's {LARGE} bytes came back as "
                             f"{len(e.received)} within {IO:g} s") from None
    if got != payload:
        raise AssertionError(f"a new client's {LARGE} bytes came back altered")


def tcp_echo(script, *args: str) -> str:
    """Every hostile client of the echo lessons, one after another, against one server."""
    with harness.start(script, *args) as server:
        did = "a client that reset the connection mid-send (its echo still unread)"
        sock = server.connect(timeout=IO)
        with server.paused():  # the bytes and the reset wait for the server together
            harness.send_all(sock, os.urandom(SMALL), timeout=IO)
            harness.reset(sock)
        survive(server, did, echo_newcomer)

        did = "a client that sends and never reads"
        sock = server.connect(timeout=IO)
        try:
            bounded(server, did, sock, lambda sock, most: harness.fill_without_reading(
                sock, limit=most, timeout=FILL_TIME), limit=ECHO_LIMIT)
            survive(server, did, echo_newcomer)  # the others are served meanwhile
        finally:
            harness.reset(sock)
        survive(server, "a client that reset the connection while your server still owed it "
                "an echo", echo_newcomer)

        payload = os.urandom(harness.kernel_takes() + OWED_AT_EOF)
        did = (f"a client that sent {len(payload)} bytes, half-closed (shutdown SHUT_WR) "
               "and then read (a 4 KiB receive buffer)")
        try:
            got = harness.owed_at_eof(server, payload, timeout=IO)
        except harness.Stalled as e:
            alive(server, did)
            raise BrokenBy(f"{did} got {len(e.received)} bytes back and no end of the "
                           f"stream within {IO:g} s") from None
        alive(server, did)
        if got != payload:
            what = "only the first" if payload.startswith(got) else "an altered"
            raise BrokenBy(f"{did} got {what} {len(got)} bytes back before the close: your "
                           "server lost what it owed")
        survive(server, did, echo_newcomer)

        did = "a client that sent garbage bytes (all 256 byte values)"
        try:
            got = harness.echo(server.address, GARBAGE, timeout=IO)
        except harness.Stalled as e:
            alive(server, did)
            raise BrokenBy(f"{did} got {len(e.received)} of {len(GARBAGE)} bytes "
                           "back") from None
        if got != GARBAGE:
            raise BrokenBy(f"{did} got them back altered")
        survive(server, did, echo_newcomer)
    return ("a reset mid-send, a client that never reads, a half-close, garbage bytes: "
            "your server survived them all")


# -- the HTTP responder (lesson 04) ---------------------------------------------------------

def http_newcomer(server: harness.Server) -> None:
    with server.connect(timeout=IO) as sock:
        harness.send_all(sock, GET, timeout=IO)
        try:
            status, head, body = harness.recv_http_response(sock, timeout=IO)
        except harness.Stalled as e:
            raise AssertionError(f"a new client's GET / got {e.received[:40]!r} and no "
                                 f"complete answer within {IO:g} s") from None
    if status != 200:
        raise AssertionError(f"a new client's GET / was answered {head[:40]!r}")


def pipeline_without_reading():
    """A send_round for bounded(): pipeline GET requests, never read an answer.

    fill_without_reading sends zero bytes, which an HTTP server rightly answers with 400
    and a close; this client sends valid requests, so the answers pile up. A send may take
    part of a request, so each one starts where the stream left off, across rounds too.
    """
    requests = memoryview(GET * (256 * 1024 // len(GET)))
    done = 0  # bytes of the request stream sent so far

    def send_round(sock: socket.socket, most: int, quiet: float = 0.25) -> int:
        nonlocal done
        sent = 0
        sock.setblocking(False)
        try:
            while sent < most:
                if not select.select([], [sock], [], quiet)[1]:
                    return sent
                try:
                    n = sock.send(requests[done % len(GET):])
                except BlockingIOError:
                    continue
                sent += n
                done += n
        finally:
            sock.settimeout(IO)
        raise AssertionError(f"the server kept taking requests: {sent} bytes and counting")
    return send_round


def http(script, *args: str) -> str:
    """Every hostile client of the HTTP lesson, one after another, against one server."""
    with harness.start(script, *args) as server:
        did = "a client that reset the connection mid-send (its answers still unread)"
        sock = server.connect(timeout=IO)
        with server.paused():
            harness.send_all(sock, GET * 200, timeout=IO)
            harness.reset(sock)
        survive(server, did, http_newcomer)

        did = "a client that pipelines requests and never reads the answers"
        sock = server.connect(timeout=IO)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, REQUESTS_SNDBUF)
        try:
            bounded(server, did, sock, pipeline_without_reading(), limit=REQUESTS_LIMIT)
            survive(server, did, http_newcomer)
        finally:
            harness.reset(sock)
        survive(server, "a client that reset the connection while your server still owed it "
                "answers", http_newcomer)

        did = "a client that sent GET /, half-closed (shutdown SHUT_WR) and read"
        with server.connect(timeout=IO) as sock:
            try:
                got = harness.half_close_and_read(sock, GET, timeout=IO)
            except harness.Stalled as e:
                alive(server, did)
                raise BrokenBy(f"{did} got {e.received[:40]!r} and no end of the stream "
                               f"within {IO:g} s") from None
        alive(server, did)
        if not (got.startswith(b"HTTP/1.1 200 ") and got.endswith(b"Hello, world!")):
            raise BrokenBy(f"{did} got {got[:40]!r}{'...' if len(got) > 40 else ''} "
                           "before the close, not its answer: your server lost what it owed")
        survive(server, did, http_newcomer)

        did = "a client that sent garbage bytes (all 256 byte values) as a request"
        with server.connect(timeout=IO) as sock:
            harness.send_all(sock, GARBAGE + b"\r\n\r\n", timeout=IO)
            try:
                got = harness.recv_until_eof(sock, timeout=IO)
            except harness.Stalled as e:
                alive(server, did)
                raise BrokenBy(f"{did} got {e.received[:40]!r} and no close within "
                               f"{IO:g} s") from None
            except OSError as e:  # a reset: the server closed with our bytes unread
                alive(server, did)
                raise BrokenBy(f"{did} had its connection reset ({e.strerror})") from None
        alive(server, did)
        if not got.startswith(b"HTTP/1.1 400 "):
            raise BrokenBy(f"{did} got {got[:40]!r}, not 400 Bad Request and a close")
        survive(server, did, http_newcomer)
    return ("a reset mid-send, a client that pipelines and never reads, a half-close, "
            "garbage bytes: your server survived them all")


# -- the UDP echo server (lesson 05) --------------------------------------------------------

def udp_newcomer(server: harness.Server) -> None:
    with server.udp_client(timeout=IO) as sock:
        sock.sendto(b"still there?", server.address)
        try:
            got = sock.recv(1 << 16)
        except socket.timeout:
            raise AssertionError(f"a new client's datagram got no answer within "
                                 f"{IO:g} s") from None
    if got != b"still there?":
        raise AssertionError(f"a new client's datagram came back as {got[:40]!r}")


def udp(script, *args: str) -> str:
    """The hostile datagrams of lesson 05, each sent and echoed on its own."""
    with harness.start(script, *args) as server, server.udp_client(timeout=IO) as sock:
        for did, datagram in (
                ("a client that sent an empty datagram", b""),
                (f"a client that sent a {BIGGEST_DATAGRAM}-byte datagram, the largest IPv4 "
                 "carries,", os.urandom(BIGGEST_DATAGRAM)),
                ("a client that sent garbage bytes (all 256 byte values)", GARBAGE)):
            sock.sendto(datagram, server.address)
            try:
                got = sock.recv(1 << 17)
            except socket.timeout:
                alive(server, did)
                raise BrokenBy(f"{did} got no answer within {IO:g} s") from None
            if len(got) != len(datagram):
                raise BrokenBy(f"{did} got {len(got)} bytes back: your server lost the rest "
                               "(is its receive buffer smaller than 64 KiB?)")
            if got != datagram:
                raise BrokenBy(f"{did} got them back altered")
            survive(server, did, udp_newcomer)
    return ("an empty datagram, the largest one, garbage bytes: your server echoed them "
            "whole")
