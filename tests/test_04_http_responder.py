"""Lesson 04, the HTTP/1.1 responder, driven by real clients: curl, http.client, urllib, wrk,
and raw sockets for what those clients never do (pipelining, byte-at-a-time, bad input)."""

import http.client
import re
import select
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

import harness
from conftest import require_tool

LESSON = "04_http_responder.py"
HELLO = b"Hello, world!"


def get(host="x", path="/", version="HTTP/1.1", extra=""):
    return f"GET {path} {version}\r\nHost: {host}\r\n{extra}\r\n".encode()


def post_echo(body: bytes, extra="") -> bytes:
    return (f"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
            .encode() + body)


def read_responses(sock, count):
    buffer = bytearray()
    responses = [harness.recv_http_response(sock, buffer) for _ in range(count)]
    assert not buffer, f"unexpected bytes after {count} responses: {bytes(buffer[:80])!r}"
    return responses


def assert_closed(sock):
    """The server closed (EOF) with nothing more to say; bounded."""
    rest = harness.recv_until_eof(sock, timeout=5)
    assert rest == b"", f"expected EOF, got {rest[:80]!r}"


@pytest.fixture
def server(start):
    return start(LESSON)


# -- real clients ----------------------------------------------------------------------------

def test_curl_get_head_and_post(server):
    curl = require_tool("curl")
    base = f"http://127.0.0.1:{server.port}"
    run = lambda *args: subprocess.run([curl, "-sS", "--max-time", "10", *args],
                                       capture_output=True, timeout=20)
    got = run(base + "/")
    assert got.returncode == 0 and got.stdout == HELLO, got
    head = run("-I", base + "/")
    assert head.returncode == 0
    text = head.stdout.decode()
    assert text.startswith("HTTP/1.1 200 OK\r\n")
    assert "Content-Length: 13\r\n" in text and "Content-Type: text/plain\r\n" in text
    assert re.search(r"\r\nDate: \w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT\r\n", text)
    echoed = run("--data-binary", "@-", base + "/echo")
    assert echoed.returncode == 0 and echoed.stdout == b""
    body = bytes(range(256)) * 40  # over 1 KiB: curl asks "Expect: 100-continue" first
    echoed = subprocess.run([curl, "-sS", "--max-time", "10", "-H", "Expect: 100-continue",
                             "--data-binary", "@-", base + "/echo"],
                            input=body, capture_output=True, timeout=20)
    assert echoed.returncode == 0 and echoed.stdout == body


def test_head_is_answered_without_a_body_and_the_next_request_still_parses(server):
    # A HEAD answer carries GET's Content-Length but no body: a body sent anyway would be
    # read by the client as the start of the next response on a keep-alive connection.
    with server.connect() as sock:
        harness.send_all(sock, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n"
                         + get(extra="Connection: close\r\n"))
        reply = harness.recv_until_eof(sock, timeout=5)
    head, _, rest = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\nContent-Length: 13" in head
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n"), rest[:80]  # not a body: the next answer
    assert rest.endswith(b"\r\n\r\n" + HELLO)


def test_curl_reuses_one_connection(server):
    curl = require_tool("curl")
    url = f"http://127.0.0.1:{server.port}/"
    got = subprocess.run([curl, "-sv", "--max-time", "10", url, url, url],
                         capture_output=True, timeout=20)
    assert got.returncode == 0 and got.stdout == HELLO * 3
    assert got.stderr.count(b"Re-using existing connection") == 2, got.stderr.decode()


def test_http_client_keep_alive_many_requests(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("GET", "/")
        conn.getresponse().read()
        first_socket = conn.sock
        for i in range(200):
            if i % 2:
                conn.request("POST", "/echo", body=f"request {i}".encode())
                expected = f"request {i}".encode()
            else:
                conn.request("GET", "/?n=%d" % i)
                expected = HELLO
            response = conn.getresponse()
            assert response.status == 200
            assert response.read() == expected
            assert not response.will_close
        assert conn.sock is first_socket  # all 201 requests on one TCP connection
        conn.request("HEAD", "/")
        response = conn.getresponse()
        assert response.getheader("Content-Length") == "13" and response.read() == b""
        conn.request("GET", "/nowhere")
        response = conn.getresponse()
        assert response.status == 404 and b"Not Found" in response.read()
        conn.request("GET", "/")  # a 404 keeps the connection
        assert conn.getresponse().read() == HELLO
    finally:
        conn.close()


def test_urllib(server):
    base = f"http://127.0.0.1:{server.port}"
    with urllib.request.urlopen(base + "/", timeout=10) as response:
        assert response.status == 200 and response.read() == HELLO
        assert response.headers["Content-Type"] == "text/plain"
    request = urllib.request.Request(base + "/echo", data=b"\x00\xff binary", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.read() == b"\x00\xff binary"
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(urllib.request.Request(base + "/", method="PUT", data=b"x"),
                               timeout=10)
    assert caught.value.code == 405 and caught.value.headers["Allow"] == "GET, HEAD"
    caught.value.close()


def test_wrk_load_has_no_errors(server):
    wrk = require_tool("wrk")
    got = subprocess.run([wrk, "-t1", "-c20", "-d1s", f"http://127.0.0.1:{server.port}/"],
                         capture_output=True, text=True, timeout=30)
    assert got.returncode == 0, got.stderr
    assert "Socket errors" not in got.stdout and "Non-2xx" not in got.stdout, got.stdout
    done = int(re.search(r"(\d+) requests in", got.stdout).group(1))
    assert done > 100, got.stdout
    assert server.alive()


# -- framing: pipelining, pieces, versions ---------------------------------------------------

def test_hundred_pipelined_requests_in_one_write(server):
    requests = [post_echo(b"n%d" % i) if i % 3 == 0 else get(path=f"/?{i}")
                for i in range(100)]
    with server.connect() as sock:
        harness.send_all(sock, b"".join(requests))
        responses = read_responses(sock, 100)
        for i, (status, _, body) in enumerate(responses):
            assert status == 200
            assert body == (b"n%d" % i if i % 3 == 0 else HELLO), f"response {i} out of order"
        harness.send_all(sock, get())  # still open and serving
        assert read_responses(sock, 1)[0][2] == HELLO


def test_requests_one_byte_at_a_time(server):
    data = get() + post_echo(b"split across many reads") + get(extra="Connection: close\r\n")
    with server.connect() as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(data)):
            sock.sendall(data[i:i + 1])
        responses = read_responses(sock, 3)
        assert [body for _, _, body in responses] == [HELLO, b"split across many reads", HELLO]
        assert b"Connection: close\r\n" in responses[2][1]
        assert_closed(sock)


def test_http10_closes_unless_keep_alive_is_asked(server):
    with server.connect() as sock:
        harness.send_all(sock, b"GET / HTTP/1.0\r\n\r\n")
        (status, head, body), = read_responses(sock, 1)
        assert status == 200 and body == HELLO and b"Connection: close" in head
        assert_closed(sock)
    with server.connect() as sock:
        harness.send_all(sock, b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" * 2)
        responses = read_responses(sock, 2)
        assert all(b"Connection: keep-alive\r\n" in head for _, head, _ in responses)
        harness.send_all(sock, b"GET / HTTP/1.0\r\n\r\n")
        assert read_responses(sock, 1)[0][2] == HELLO
        assert_closed(sock)


def test_connection_close_is_honoured_and_later_requests_dropped(server):
    with server.connect() as sock:
        harness.send_all(sock, get(extra="Connection: close\r\n") + get() + get())
        (status, head, _), = read_responses(sock, 1)  # only the first is answered
        assert status == 200 and b"Connection: close\r\n" in head
        assert_closed(sock)


def test_half_closed_client_still_gets_its_answers(server):
    with server.connect() as sock:
        harness.send_all(sock, get() + get())
        sock.shutdown(socket.SHUT_WR)
        responses = read_responses(sock, 2)
        assert [body for _, _, body in responses] == [HELLO, HELLO]
        assert_closed(sock)


# -- errors: a clear status, then the connection closes --------------------------------------

ERRORS = {
    "garbage request line": (b"\xff\xfe\x00 hello\r\n\r\n", 400),
    "two spaces in request line": (b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "header without colon": (b"GET / HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n", 400),
    "space before colon": (b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400),
    "folded header": (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  more\r\n\r\n", 400),
    "control byte in value": (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", 400),
    "missing host": (b"GET / HTTP/1.1\r\n\r\n", 400),
    "bad content-length": (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
    "two content-lengths": (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
                            b"Content-Length: 2\r\n\r\nab", 400),
    "bare LF lines": (b"GET / HTTP/1.1\nHost: x\n\n", 400),
    "method not allowed": (b"DELETE / HTTP/1.1\r\nHost: x\r\n\r\n", 405),
    "GET on /echo": (b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n", 405),
    "head too large": (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431),
    "body too large": (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n", 413),
    "HTTP/2.0": (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    "HTTP/0.9 style": (b"GET / HTTP/9\r\n\r\n", 400),
    "chunked": (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n0\r\n\r\n", 501),
}


@pytest.mark.parametrize("name", ERRORS)
def test_error_is_answered_then_closed(server, name):
    data, status = ERRORS[name]
    with server.connect() as sock:
        harness.send_all(sock, get() + data)  # a good request first: it is answered
        reply = harness.recv_until_eof(sock, timeout=5)
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n")
    second = reply[reply.index(HELLO) + len(HELLO):]
    assert second.startswith(b"HTTP/1.1 %d " % status), second[:80]
    assert b"Connection: close\r\n" in second
    if status == 405:
        assert re.search(rb"\r\nAllow: [A-Z, ]+\r\n", second)
    assert urllib.request.urlopen(f"http://127.0.0.1:{server.port}/", timeout=10).read() == HELLO


def test_header_limit_is_a_flag(start):
    server = start(LESSON, "--max-header-bytes", "100")
    with server.connect() as sock:
        harness.send_all(sock, get(extra="X-Pad: " + "p" * 100 + "\r\n"))
        assert harness.recv_until_eof(sock, timeout=5).startswith(b"HTTP/1.1 431 ")
    big = start(LESSON, "--max-header-bytes", "20000")
    with big.connect() as sock:
        harness.send_all(sock, get(extra="X-Pad: " + "p" * 12000 + "\r\n"))
        assert read_responses(sock, 1)[0][0] == 200


def test_413_comes_before_the_body_is_sent(start):
    server = start(LESSON, "--max-body-bytes", "10")
    with server.connect() as sock:
        harness.send_all(sock, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n"
                               b"Expect: 100-continue\r\n\r\n")
        reply = harness.recv_until_eof(sock, timeout=5)
        assert reply.startswith(b"HTTP/1.1 413 ") and b"100 Continue" not in reply


def test_endless_header_keeps_memory_bounded(server):
    rss_before = server.rss_bytes()
    line = b"X-Endless: " + b"e" * 4000 + b"\r\n"
    with server.connect() as sock:
        harness.send_all(sock, b"GET / HTTP/1.1\r\nHost: x\r\n")
        sent = 0
        sock.setblocking(False)
        reply = b""
        while not reply and sent < 8 << 20:  # header lines until the server speaks (431)
            try:
                sent += sock.send(line)
                reply = sock.recv(65536)
            except BlockingIOError:
                pass
        sock.shutdown(socket.SHUT_WR)
        reply += harness.recv_until_eof(sock, timeout=5)
    assert reply.startswith(b"HTTP/1.1 431 "), reply[:80]
    assert server.rss_bytes() - rss_before < 4 << 20
    assert urllib.request.urlopen(f"http://127.0.0.1:{server.port}/", timeout=10).read() == HELLO


def test_slow_client_does_not_hold_up_others(server):
    with server.connect() as slow:
        harness.send_all(slow, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Le")
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        try:
            for _ in range(20):
                conn.request("GET", "/")
                assert conn.getresponse().read() == HELLO
        finally:
            conn.close()
        harness.send_all(slow, b"ngth: 4\r\n\r\nslow")
        assert read_responses(slow, 1)[0][2] == b"slow"


def test_rude_clients_do_not_stop_the_server(server):
    for data in (b"", b"GET / HTT", get() * 50, b"\x80" * 5000):
        sock = server.connect()
        if data:
            harness.send_all(sock, data)
        harness.reset(sock)
    assert urllib.request.urlopen(f"http://127.0.0.1:{server.port}/", timeout=10).read() == HELLO
    assert server.alive()


# -- timers ----------------------------------------------------------------------------------

def test_idle_and_half_sent_connections_time_out(start):
    server = start(LESSON, "--idle-timeout", "0.3", "--trace")
    with server.connect() as idle, server.connect() as half, server.connect() as used:
        harness.send_all(half, b"GET / HTTP/1.1\r\nHost:")
        harness.send_all(used, get())
        assert read_responses(used, 1)[0][2] == HELLO
        assert harness.recv_until_eof(idle, timeout=5) == b""
        assert harness.recv_until_eof(used, timeout=5) == b""  # idle after its answer
        assert harness.recv_until_eof(half, timeout=5).startswith(b"HTTP/1.1 408 ")
    server.wait_for_line("request timed out", timeout=5)
    before = server.cpu_seconds()
    harness.recv_until_quiet(server.connect(), quiet=0.2, timeout=1)
    assert server.cpu_seconds() - before < 0.1  # no spinning around the timers


def test_default_timeout_keeps_a_pause_between_requests(server):
    with server.connect() as sock:
        harness.send_all(sock, get())
        read_responses(sock, 1)
        assert harness.recv_until_quiet(sock, quiet=0.4) == b""  # still open, silent
        harness.send_all(sock, get())
        assert read_responses(sock, 1)[0][2] == HELLO


# -- the contract (signals, ports, unknown flags: tests/test_lesson_contract.py) ----------------

def test_user_mistakes_exit_2_with_one_line():
    # the lesson's own flags; port in use and unknown flags: tests/test_lesson_contract.py
    for args in (["--idle-timeout", "0"], ["--max-header-bytes", "3"]):
        done = harness.run(LESSON, *args)
        assert done.returncode == 2, args
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_no_keep_alive_flag_closes_after_each_answer(start):
    server = start(LESSON, "--no-keep-alive")
    with server.connect() as sock:
        harness.send_all(sock, get() + get())
        (status, head, body), = read_responses(sock, 1)
        assert body == HELLO and b"Connection: close\r\n" in head
        assert_closed(sock)


def test_client_leaving_without_a_request_costs_no_cpu(start):
    # The classic responder's bug: an empty recv never handled, EPOLLIN reported forever.
    # The idle timeout (5 s by default) would end such a spin and hide it: it is set long.
    server = start(LESSON, "--idle-timeout", "60")
    for _ in range(5):
        server.connect().close()
    assert server.asleep_in_epoll(timeout=2), "not back in epoll_wait after the clients left"
    before = server.cpu_seconds()
    with server.connect() as probe:
        assert harness.recv_until_quiet(probe, quiet=0.3) == b""
    assert server.cpu_seconds() - before < 0.1
    assert urllib.request.urlopen(f"http://127.0.0.1:{server.port}/", timeout=10).read() == HELLO


# -- bare LF: a head whose end is plain under RFC 9112 2.2's LF rule -------------------------

BARE_LF_HEADS = {
    "request line ends in LF": b"GET / HTTP/1.0\n\r\n",
    "last header line ends in LF": b"GET / HTTP/1.1\r\nHost: x\n\r\n",
    "every line ends in LF": b"GET / HTTP/1.0\n\n",
    "empty line is a bare LF": b"GET / HTTP/1.1\r\nHost: x\r\n\n",
}


@pytest.mark.parametrize("name", BARE_LF_HEADS)
def test_head_ended_by_bare_lf_is_refused_at_once(server, name):
    # A parser that looks only for CRLF CRLF never sees these heads end: no answer until the
    # idle timeout (5 s). The lesson refuses bare LF, and says so as soon as the head ends.
    with server.connect() as sock:
        harness.send_all(sock, get() + BARE_LF_HEADS[name])  # a good request first
        reply = harness.recv_until_eof(sock, timeout=1.0)
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n")
    second = reply[reply.index(HELLO) + len(HELLO):]
    assert second.startswith(b"HTTP/1.1 400 ") and b"CRLF" in second, second[:80]
    assert b"Connection: close\r\n" in second


def test_bare_lf_head_sent_byte_by_byte_is_refused_on_its_last_byte(server):
    head = BARE_LF_HEADS["last header line ends in LF"]
    with server.connect() as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(head) - 1):
            harness.send_all(sock, head[i:i + 1])
        assert harness.recv_until_quiet(sock, quiet=0.2) == b""  # not complete: it waits
        harness.send_all(sock, head[-1:])
        assert harness.recv_until_eof(sock, timeout=1.0).startswith(b"HTTP/1.1 400 ")


def test_lf_before_the_crlf_crlf_of_a_pipelined_request_is_refused(server):
    # Under the LF rule the first head ends at its LF CR LF; taking CRLF CRLF as the end
    # would glue it to the request behind it.
    with server.connect() as sock:
        harness.send_all(sock, b"GET / HTTP/1.1\r\nHost: x\n\r\n" + get())
        reply = harness.recv_until_eof(sock, timeout=1.0)
    assert reply.startswith(b"HTTP/1.1 400 ") and reply.count(b"HTTP/1.1 ") == 1, reply[:120]
    assert b"lines must end with CRLF" in reply  # not a glued head's "control characters"


# -- what the write path and the timers promise, each with its own client --------------------

def epoll_masks(server):
    """The event mask of every entry of the server's epoll interest list, as the kernel holds
    it (/proc/PID/fdinfo of the epoll fd: one `tfd: N events: MASK` line per entry)."""
    masks = []
    for info in (Path(f"/proc/{server.pid}/fdinfo")).iterdir():
        try:
            text = info.read_text()
        except OSError:  # an fd closed while we looked
            continue
        found = re.findall(r"^tfd:\s*\d+\s+events:\s*([0-9a-f]+)", text, re.M)
        masks += [int(mask, 16) for mask in found]
    return masks


def test_requests_waiting_while_throttled_are_answered(server):
    # A client pipelines GETs and reads nothing, until the server stops reading from it
    # (its unsent answers passed HIGH_WATER; its epoll entry then lacks EPOLLIN) with
    # requests left in its inbox and nothing left unread. The client sends nothing more and
    # reads: the server must answer those requests from its inbox when it reads again.
    # Waiting for new bytes instead would leave it stalled. (When the server stopped with
    # bytes still unread, which TCP's window sometimes makes so, reading them hides that
    # mistake: that connection proves nothing, and the test tries a new one.)
    with server.connect() as probe:  # every answer to get() has the same length
        harness.send_all(probe, get())
        _, head, body = harness.recv_http_response(probe)
    answer = len(head) + len(body)
    chunk = get() * (16_000 // len(get()))

    def throttled():
        return any(not mask & select.EPOLLIN for mask in epoll_masks(server))

    for _ in range(20):
        with server.connect() as sock:
            sent = 0
            while not throttled():
                assert sent < 200_000, "the server never stopped reading from a client that reads"
                with server.paused():  # the chunk is all there when the server looks
                    harness.send_all(sock, chunk)
                sent += chunk.count(b"GET ")
                harness.wait_until(lambda: server.asleep_in_epoll(timeout=0) and (
                    harness.unread_bytes(server, sock) == 0 or throttled()), timeout=10,
                    what="the server reading the chunk")
            everything_read = harness.unread_bytes(server, sock) == 0
            got = harness.recv_exactly(sock, sent * answer, timeout=10)
        assert got.count(b"HTTP/1.1 200 OK\r\n") == sent
        if everything_read:
            return
    raise AssertionError("the server never stopped reading with everything read, in 20 tries")


def test_a_refused_client_gets_its_answer_whole_and_the_rest_is_dropped(server):
    # After its last answer the server half-closes and reads what still comes, only to drop
    # it: a close with unread bytes would send a reset, which can destroy the answer, and
    # keeping those bytes would let a client grow the server's memory at will.
    rss = server.rss_bytes()
    with server.connect() as sock:
        harness.send_all(sock, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n")
        harness.send_all(sock, bytes(32 << 20), timeout=20)  # read and dropped
        grown = server.rss_bytes() - rss
        sock.shutdown(socket.SHUT_WR)
        reply = harness.recv_until_eof(sock, timeout=10)
    assert reply.startswith(b"HTTP/1.1 413 ") and reply.endswith(b"the body is over the limit\n")
    assert grown < 8 << 20, f"the server grew by {grown} bytes while dropping 32 MiB"


def test_a_slow_reader_that_makes_progress_is_not_timed_out(start):
    # One answer far larger than the kernel takes, read at a steady pace: the server holds
    # its unsent rest for longer than --idle-timeout, but every send that makes progress
    # restarts the clock. (The kernel reports EPOLLOUT only once a good part of its send
    # buffer is free again, about a MiB here: the pace makes that a tenth of a second.)
    timeout = 1.0
    server = start(LESSON, "--idle-timeout", str(timeout), "--max-body-bytes", str(32 << 20))
    body = bytes(harness.kernel_takes() + (16 << 20))
    with server.connect() as sock:
        harness.send_all(sock, post_echo(body), timeout=20)
        got = bytearray()
        started = time.monotonic()
        while time.monotonic() - started < 1.5 * timeout:  # 1 MiB each 0.1 s: 10 MB/s
            got += harness.recv_exactly(sock, 1 << 20, timeout=5)
            time.sleep(0.1)  # the client's pace, not a wait for the server
        status, _, echoed = harness.recv_http_response(sock, got, timeout=20)
    assert status == 200 and echoed == body


def test_expect_100_continue_gets_the_go_ahead_first(server):
    head = (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
            b"Expect: 100-continue\r\n\r\n")
    with server.connect() as sock:
        harness.send_all(sock, head)
        go_ahead = b"HTTP/1.1 100 Continue\r\n\r\n"
        assert harness.recv_exactly(sock, len(go_ahead), timeout=5) == go_ahead
        harness.send_all(sock, b"hello")
        status, _, body = harness.recv_http_response(sock)
        assert (status, body) == (200, b"hello")
        harness.send_all(sock, head + b"again")  # the body came with the head: no go-ahead
        status, _, body = harness.recv_http_response(sock)
        assert (status, body) == (200, b"again")


def test_each_request_restarts_the_idle_clock(start):
    # Four requests 0.4 s apart on one connection, with --idle-timeout 1: the last comes
    # 1.2 s after the connection opened, but only 0.4 s after the one before.
    server = start(LESSON, "--idle-timeout", "1")
    with server.connect() as sock:
        for i in range(4):
            if i:
                assert harness.recv_until_quiet(sock, quiet=0.4) == b""  # open and silent
            harness.send_all(sock, get())
            assert read_responses(sock, 1)[0][2] == HELLO, f"request {i + 1} of 4"


def test_forms_of_a_request_the_parser_accepts(server):
    with server.connect() as sock:
        harness.send_all(sock, b"\r\n\r\n" + get())  # empty lines before a request (RFC 9112 2.2)
        harness.send_all(sock, get(path="http://example.com/?q=1"))  # absolute form
        harness.send_all(sock, get(path="http://example.com"))  # absolute form, no path: /
        harness.send_all(sock, post_echo(b"abc", "Content-Length: 3\r\n"))  # the same length twice
        responses = read_responses(sock, 4)
    assert [(status, body) for status, _, body in responses] == [
        (200, HELLO), (200, HELLO), (200, HELLO), (200, b"abc")]


def test_unknown_path_is_404_after_its_body(server):
    # The body of a request to no route is read past, not taken for the next request.
    hidden = get()
    with server.connect() as sock:
        harness.send_all(sock, b"POST /nowhere HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                         % len(hidden) + hidden + get())
        responses = read_responses(sock, 2)
        assert [status for status, _, _ in responses] == [404, 200]
        assert harness.recv_until_quiet(sock, quiet=0.2) == b""  # and no third answer


def test_trace_has_a_line_per_answer_and_per_close(start):
    # What the notebook counts: "METHOD TARGET -> STATUS" for each answer, "error -> ..."
    # for a refusal, and "close: WHY" for each connection.
    server = start(LESSON, "--trace")
    with server.connect() as sock:
        harness.send_all(sock, get(path="/?a") + get(path="/nowhere") + b"BAD\r\n\r\n")
        harness.recv_until_eof(sock, timeout=5)
    server.wait_for_line("close:", timeout=5)
    lines = server.lines[1:]
    assert lines == ["GET /?a -> 200", "GET /nowhere -> 404",
                     "error -> 400 (the request line must be METHOD TARGET VERSION)",
                     "close: client finished"], lines


def test_a_negative_body_limit_is_a_user_mistake():
    done = harness.run(LESSON, "--max-body-bytes", "-1")
    assert done.returncode == 2 and "--max-body-bytes" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
