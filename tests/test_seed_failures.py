"""The classic epoll tutorials' bugs, one test each: put any of them back into a lesson and
its test here fails. What the bug was is said above each test.

Each test drives every lesson where the bug could live, with the client that exposes it.
"""

import ast
import os
import select
import socket

import pytest

import harness
from conftest import still_serves
from lesson_list import scripts, servers  # tools/lesson_list.py: the one list of lessons

MiB = 1 << 20
# Every lesson that is a server, run as it starts with no flags, from lessons/lessons.toml.
ECHO = scripts("echo")
HTTP = scripts("http")
UDP = scripts("udp")
TCP = ECHO + HTTP
ALL = servers()
LESSON_FILES = [harness.LESSONS / name for name in ALL]
GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
NOT_UTF8 = b"\xff\xfe\x80 not utf-8 \xc3\x28"


def fill(lesson, sock, **kwargs):
    """Send without reading until the server holds all it will for this client (for lesson
    04, pipelined requests whose answers pile up)."""
    chunk = GET * 2000 if lesson in HTTP else None
    return harness.fill_without_reading(sock, chunk=chunk, **kwargs)


def request_for(lesson, payload):
    """What a client of `lesson` sends to carry `payload`: the bytes themselves for an echo,
    a POST /echo for the HTTP responder."""
    if lesson in HTTP:
        head = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(payload)
        return head + payload
    return payload


# -- the first client ----------------------------------------------------------------------
# Two edge-triggered tutorial servers, having drained the accept queue, fell through into
# the read loop with the listening socket: recv on it raised ENOTCONN, uncaught, and the
# server died on its very first client.

@pytest.mark.parametrize("lesson", TCP)
def test_a_burst_of_first_clients_is_served(start, lesson):
    server = start(lesson)
    clients = []
    try:
        with server.paused():  # several clients in the accept queue: one edge for them all
            for _ in range(5):
                sock = server.connect()
                clients.append(sock)
                harness.send_all(sock, request_for(lesson, b"first"))
        for sock in clients:
            if lesson in HTTP:
                assert harness.recv_http_response(sock)[2] == b"first"
            else:
                assert harness.recv_exactly(sock, 5) == b"first"
    finally:
        for sock in clients:
            sock.close()
    still_serves(server)


# -- bytes that are not text ---------------------------------------------------------------
# One tutorial printed every chunk received with .decode(): a single byte that is not UTF-8
# raised UnicodeDecodeError and ended the server for everybody. --trace is where a lesson
# prints what happens, so it is on where the lesson has it.

def traced(lesson):
    return ["--trace"] if '"--trace"' in (harness.LESSONS / lesson).read_text() else []


@pytest.mark.parametrize("lesson", ALL)
def test_bytes_that_are_not_utf8_are_only_bytes(start, lesson):
    server = start(lesson, *traced(lesson))
    if lesson in UDP:
        with server.udp_client(timeout=2) as sock:
            sock.sendto(NOT_UTF8, server.address)
            assert sock.recv(1 << 16) == NOT_UTF8
    elif lesson in HTTP:
        for bad in (NOT_UTF8 + b"\r\n\r\n", b"GET /\xff\xfe HTTP/1.1\r\nHost: \xc3\x28\r\n\r\n",
                    request_for(lesson, NOT_UTF8)):
            with server.connect() as sock:
                harness.send_all(sock, bad)
                reply = harness.recv_http_response(sock)
                assert reply[0] in (200, 400), reply
    else:
        with server.connect() as sock:
            harness.send_all(sock, NOT_UTF8)
            assert harness.recv_exactly(sock, len(NOT_UTF8)) == NOT_UTF8
    still_serves(server)


# -- every way of leaving, all at once -----------------------------------------------------
# After closing a connection inside the read branch, the tutorials went on to the write and
# hang-up branches for the same fd and touched what they had just deleted (KeyError, or
# epoll.unregister on a closed fd). One batch of events with every kind of departure in it
# exposes each path: reset with output owed, reset with input unread, close, half-close.

@pytest.mark.parametrize("lesson", TCP)
def test_every_way_of_leaving_in_one_batch(start, lesson):
    server = start(lesson)
    owed = server.connect()
    fill(lesson, owed, quiet=0.1)  # the server holds output for it
    leavers = [server.connect() for _ in range(4)]
    with server.paused():
        harness.reset(owed)  # reset with output owed: the next send fails
        harness.send_all(leavers[0], request_for(lesson, os.urandom(1000)))
        harness.reset(leavers[0])  # reset with input unread: the next recv fails
        harness.send_all(leavers[1], request_for(lesson, b"bye"))
        leavers[1].close()  # an ordinary close
        harness.send_all(leavers[2], request_for(lesson, b"done"))
        leavers[2].shutdown(socket.SHUT_WR)  # a half-close: it still reads
        leavers[3].close()  # connected, sent nothing, gone
    assert harness.recv_until_eof(leavers[2]).endswith(b"done")
    for sock in leavers:
        sock.close()
    still_serves(server)


# -- resets and broken pipes ---------------------------------------------------------------
# ECONNRESET (a recv after the peer's reset) and EPIPE (a send after it) were caught
# nowhere: one rude client stopped the server for everybody.

@pytest.mark.parametrize("lesson", TCP)
def test_resets_at_every_moment_stop_only_that_connection(start, lesson):
    server = start(lesson)
    for i in range(20):
        sock = server.connect()
        if i % 3 == 0:  # input unread: the server's recv meets the reset
            harness.send_all(sock, request_for(lesson, os.urandom(64 * 1024)))
        elif i % 3 == 1:  # output owed: the server's send meets it
            fill(lesson, sock, quiet=0.05)
        harness.reset(sock)
    still_serves(server)


# -- what is owed after EOF ----------------------------------------------------------------
# On EOF the tutorials closed at once and threw away output they still owed: a client that
# sends, half-closes and then reads got less than it was owed. Loopback's buffers hide this
# (the kernel takes the whole answer before the EOF is read), so the client keeps a 4 KiB
# receive buffer and sends 768 KiB more than the kernel takes for it: when the server reads
# EOF it holds that much itself, below its high-water mark (1 MiB), so it read on to the EOF.
# harness.owed_at_eof reads only once the server has read everything: the loss, if any, is
# the same every run.

OWED = 768 * 1024


@pytest.mark.parametrize("lesson", ECHO)
def test_half_close_gets_everything_owed_by_a_slow_reader(start, lesson):
    server = start(lesson)
    payload = os.urandom(harness.kernel_takes() + OWED)
    got = harness.owed_at_eof(server, payload)
    assert len(got) == len(payload) and got == payload, f"{len(payload) - len(got)} bytes lost"
    still_serves(server)


@pytest.mark.parametrize("lesson", HTTP)
def test_half_closed_http_client_gets_every_answer(start, lesson):
    server = start(lesson)
    with server.connect() as sock:
        harness.send_all(sock, GET)
        _, head, body = harness.recv_http_response(sock)
    one = len(head) + len(body)
    count = (harness.kernel_takes(bytes(one * 2000)) + OWED) // one
    got = harness.owed_at_eof(server, GET * count)
    answers = got.count(b"HTTP/1.1 200 OK\r\n")
    assert answers == count, f"{count - answers} of {count} answers lost"
    still_serves(server)


@pytest.mark.parametrize("lesson", HTTP)
def test_pipelined_answers_reach_a_slow_reader_whole(start, lesson):
    # Lesson 04's partial sends: 7 MiB of answers to pipelined requests, far more than the
    # kernel's buffers take, for a client with a 4 KiB receive buffer that half-closes.
    server = start(lesson)
    bodies = [os.urandom(MiB - 1000) for _ in range(7)]
    with server.connect(rcvbuf=4096) as sock:
        got = harness.half_close_and_read(
            sock, b"".join(request_for(lesson, body) for body in bodies), timeout=60)
    answers = got.count(b"HTTP/1.1 200 OK\r\n")
    assert answers == len(bodies), f"{len(bodies) - answers} of {len(bodies)} answers lost"
    position = 0
    for i, body in enumerate(bodies):
        found = got.find(body, position)
        assert found > position, f"answer {i} lost or cut short"
        position = found + len(body)
    assert position == len(got)
    still_serves(server)


# -- a client that leaves ------------------------------------------------------------------
# The level-triggered tutorial responder never handled an empty recv: a client that connects
# and leaves makes its fd readable forever, and the server spins at full CPU. The
# edge-triggered one looped `requests += recv()` until an exception; at EOF recv returns b""
# without raising, and the loop never ends. Either way: CPU burnt and nobody else served.
# (Lesson 04's own idle timeout would end such a spin after some seconds: it is set long.)

LEAVE_ARGS = {"04_http_responder.py": ["--idle-timeout", "60"]}


@pytest.mark.parametrize("lesson", TCP)
def test_clients_that_leave_cost_nothing(start, lesson):
    server = start(lesson, *LEAVE_ARGS.get(lesson, []))
    for _ in range(3):
        server.connect().close()  # connected, sent nothing, gone
    assert server.asleep_in_epoll(timeout=2), "never back asleep in epoll_wait: a spin or an endless loop"
    used = server.cpu_seconds_over(0.5)
    assert used < 0.05, f"{used:.2f} s of CPU in 0.5 s after clients left"
    for _ in range(3):
        with server.connect() as sock:  # sent something, then EOF; reads what it is owed
            harness.send_all(sock, request_for(lesson, b"x"))
            sock.shutdown(socket.SHUT_WR)
            assert harness.recv_until_eof(sock, timeout=5).endswith(b"x")
    assert server.asleep_in_epoll(timeout=2), "never back asleep in epoll_wait: a spin or an endless loop"
    still_serves(server)


# -- a client that never reads -------------------------------------------------------------
# The tutorials' send buffers grew without bound: a client that sends and never reads made
# the server buffer everything (all its memory, in the end).

@pytest.mark.parametrize("lesson", TCP)
def test_a_client_that_never_reads_is_held_back(start, lesson):
    server = start(lesson)
    rss = server.rss_bytes()
    with server.connect() as greedy:
        sent = fill(lesson, greedy, limit=64 * MiB)  # raises if the server takes it all
        grown = server.rss_bytes() - rss
        assert grown < 8 * MiB, f"the server grew by {grown} bytes after {sent} were sent"
        still_serves(server)  # and others are served meanwhile


# ... and they built those buffers with `bytes +=` and slicing, which copies the whole
# buffer on every append and every partial send. Checked in the source: each lesson keeps
# its buffers in bytearrays and drops a sent prefix in place (`del buf[:n]`).

def buffer_assignments(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Attribute) and target.attr.endswith(("box", "buffer")):
                    yield target.attr, node.value


@pytest.mark.parametrize("path", LESSON_FILES, ids=lambda p: p.name)
def test_buffers_are_bytearrays_trimmed_in_place(path):
    tree = ast.parse(path.read_text())
    found = list(buffer_assignments(tree))
    assert found, "no outbox or inbox found"
    for name, value in found:
        called = isinstance(value, ast.Call) and (getattr(value.func, "id", None)
                                                  or getattr(value.func, "attr", None))
        assert called in ("bytearray", "deque"), f"{name} = {ast.unparse(value)}"
    for node in ast.walk(tree):  # never `x.outbox = x.outbox[n:]`: a copy of the rest
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Subscript):
            assert ast.unparse(node.targets[0]) != ast.unparse(node.value.value), \
                ast.unparse(node)


# -- partial sends -------------------------------------------------------------------------
# One tutorial ignored what send() returned: whatever the kernel did not take was dropped.
# A slow reader (4 KiB receive buffer) makes almost every send partial.

@pytest.mark.parametrize("lesson", ECHO)
def test_partial_sends_lose_nothing(start, lesson):
    # Lesson 04's answers: test_pipelined_answers_reach_a_slow_reader_whole.
    server = start(lesson)
    payload = os.urandom(6 * MiB)  # more than the server's send buffer can take at once
    # bounded well above the second or so this takes, but a loss is not waited for long
    assert harness.exchange(server.address, [payload], rcvbuf=4096, timeout=20) == [payload]
    still_serves(server)


# -- state of a closed connection ----------------------------------------------------------
# One tutorial never removed a connection's entries from its dictionaries on close: memory
# grew with every client. Here a crowd leaves while the server holds about 1 MiB for each;
# once they are gone that memory must be given back, and the server must stop cleanly.
# What is measured is the process's size, so the C allocator is told to give freed buffers
# back at once: by default glibc raises its mmap threshold after a large free and keeps later
# buffers in its heap for reuse, which would look like a leak on some runs and not others.
GIVE_BACK = {"MALLOC_MMAP_THRESHOLD_": str(128 << 10)}  # mallopt(3): a fixed threshold


@pytest.mark.parametrize("lesson", ECHO)
def test_a_crowd_that_leaves_leaves_nothing_behind(start, lesson):
    server = start(lesson, env=GIVE_BACK)
    fds, rss = server.open_fds(), server.rss_bytes()
    crowd = [server.connect() for _ in range(20)]
    for sock in crowd:
        harness.fill_without_reading(sock, quiet=0.05)
    held = server.rss_bytes() - rss
    assert held > 10 * MiB, f"the server held only {held} bytes for 20 clients"
    for sock in crowd:
        harness.reset(sock)
    harness.wait_until(lambda: server.open_fds() == fds, what="every client's fd closed")
    still_serves(server)
    kept = server.rss_bytes() - rss
    assert kept < held / 4, f"still {kept} bytes more than before, of {held} held"
    assert server.stop() == 0 and "Traceback" not in server.output()


# -- epoll's own names ---------------------------------------------------------------------
# A tutorial used select.POLLERR where select.EPOLLERR was meant; it worked only because the
# two constants happen to have the same value. The lessons use the EPOLL names only.

def select_names(node):
    return {n.attr for n in ast.walk(node)
            if isinstance(n, ast.Attribute) and getattr(n.value, "id", "") == "select"}


@pytest.mark.parametrize("path", LESSON_FILES, ids=lambda p: p.name)
def test_lessons_use_epoll_names_only(path):
    # A lesson that sets poll(2) beside epoll on purpose keeps poll's names inside the
    # function or class that calls select.poll(); everywhere else only EPOLL names.
    tree = ast.parse(path.read_text())
    poll_names = {name for name in dir(select) if name.startswith("POLL")}
    assert any(name.startswith("EPOLL") for name in select_names(tree))
    for node in tree.body:
        wrong = select_names(node) & poll_names
        if wrong and isinstance(node, (ast.FunctionDef, ast.ClassDef)) \
                and "poll" in select_names(node):
            continue  # the poll(2) back-end itself
        assert not wrong, f"poll(2) constants outside a poll(2) back-end: {sorted(wrong)}"
