#!/usr/bin/env python3
"""Exercise 04: at most N requests per keep-alive connection (lesson 04's responder).

Your task: with --max-requests N (N > 0), answer the N-th request on a connection with
`Connection: close` and then end that connection, as nginx's keepalive_requests does, so
that no client holds one connection forever. 0, the default, means no limit. The lines to
change are marked TODO in exercises/04_max_requests.py; `make check` tells you when it
works. solutions/04_max_requests.py is the finished version, with the starting point's lines
beside the answer.

Lesson 04 says the rest:

    python3 lessons/04_http_responder.py        # listening on 127.0.0.1:9004
    curl -v http://127.0.0.1:9004/
    curl --data-binary 'hi there' http://127.0.0.1:9004/echo

The classic tutorial responder reads until a blank line, writes one canned answer and shuts
the socket. Real clients do more, and an event loop has to follow them:

- a request may arrive in pieces (one byte per recv, in the worst case) or many at once
  (pipelining: a hundred requests in one segment); parse from a buffer, answer in order;
- HTTP/1.1 keeps the connection open by default (keep-alive); `Connection: close` and
  HTTP/1.0 end it after the answer;
- bad input gets a clear status (400, 405, 413, 431, 501, 505) and then the connection is
  closed gracefully (half-close, read what is left, then close: see finish());
- idle connections and half-sent requests are closed after --idle-timeout seconds, with the
  epoll_wait timeout taken from the nearest deadline (the timers of this event loop);
- memory per connection is bounded: the head by --max-header-bytes, a body by
  --max-body-bytes, the output by HIGH_WATER (we stop reading while a client does not read).

Routes: GET and HEAD of / answer "Hello, world!"; POST /echo answers with the request body.
The loop is level-triggered (lesson 01), which lets every handler do one recv per event.
It is built to be fast without cutting corners: responses for / are pre-built once per
second (the Date header changes), the head is found with bytes.find, not a regex, and all
the requests found in one recv are answered with one send.

--trace prints one line per answered request; --no-keep-alive turns it into the classic
design (one request per connection) so that the notebook can show what that costs.
"""

import argparse
import errno
import collections
import select
import signal
import socket
import sys
import time
from email.utils import formatdate

READABLE = select.EPOLLIN
WRITABLE = select.EPOLLOUT
# The kernel always reports these, asked or not. They are not a verdict: the next recv or
# send says what really happened (EOF, reset, ...), so treat them as "both directions ready".
TROUBLE = select.EPOLLHUP | select.EPOLLERR

RECV_SIZE = 64 * 1024  # bytes asked for by one recv()
HIGH_WATER = 1 << 20  # unsent bytes at which we stop reading (and parsing) that client...
LOW_WATER = 256 * 1024  # ...and the level at which we read from it again
BACKLOG = 1024  # connections the kernel may queue for us before accept()
MAX_HEADER_BYTES = 8 * 1024  # request line plus headers; more is answered with 431
MAX_BODY_BYTES = 1 << 20  # a larger Content-Length is answered with 413
IDLE_TIMEOUT = 5.0  # seconds a connection may wait for its next complete request
# accept() errors that say "out of file descriptors" (ours: EMFILE, the system's: ENFILE) or
# "out of kernel memory": not this client's fault, and the next accept fails the same way.
OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
RETRY_ACCEPT = 1.0  # seconds: while accept is paused, try again this often anyway

END_OF_HEAD = b"\r\n\r\n"  # the empty line that ends the request line and headers
HELLO = b"Hello, world!"
SERVER_NAME = b"epoll-workbook"
ROUTES = {b"/": (b"GET", b"HEAD"), b"/echo": (b"POST",)}  # path -> the methods it allows

# RFC 9110 5.6.2: a header name (and a method) is a "token" of these characters. Deleting
# them with bytes.translate leaves nothing exactly when the name is valid: a check in C,
# and no decoding of client bytes that could raise.
TOKEN_CHARS = (b"!#$%&'*+-.^_`|~0123456789"
               b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
# Visible ASCII, space, tab and bytes >= 0x80 may appear in a header value (RFC 9110 5.5);
# control characters (NUL, a lone CR, ...) may not.
VALUE_CHARS = bytes([9, 32]) + bytes(range(33, 127)) + bytes(range(128, 256))
TARGET_CHARS = bytes(range(33, 127))  # a request target is visible ASCII only

REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           408: "Request Timeout", 413: "Content Too Large",
           431: "Request Header Fields Too Large", 501: "Not Implemented",
           505: "HTTP Version Not Supported"}


class HttpError(Exception):
    """A request we refuse: answered with `status`, then the connection is closed."""

    def __init__(self, status, detail, extra_headers=b""):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.extra_headers = extra_headers


class Request:
    """One parsed request head; kept on the connection while its body is still arriving."""

    __slots__ = ("method", "target", "version", "path", "keep_alive", "length",
                 "expect_continue")

    def __init__(self, method, target, version, path, keep_alive, length, expect_continue):
        self.method = method
        self.version = version
        self.target = target
        self.path = path
        self.keep_alive = keep_alive
        self.length = length  # body bytes announced by Content-Length (0 without one)
        self.expect_continue = expect_continue


def parse_head(head):
    """Parse the bytes before the empty line into a Request, or raise HttpError.

    Nothing here decodes client bytes: names are compared as bytes, and checked with
    bytes.translate, so no input can raise anything but HttpError.
    """
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise HttpError(400, "the request line must be METHOD TARGET VERSION")
    method, target, version = parts
    if version == b"HTTP/1.1":
        keep_alive = True  # HTTP/1.1: persistent unless someone says close
    elif version == b"HTTP/1.0":
        keep_alive = False  # HTTP/1.0: one request unless the client asks for keep-alive
    elif (len(version) == 8 and version.startswith(b"HTTP/") and version[5:6].isdigit()
          and version[6:7] == b"." and version[7:8].isdigit()):
        raise HttpError(505, "only HTTP/1.0 and HTTP/1.1 are spoken here")
    else:
        raise HttpError(400, "the version must look like HTTP/1.1")
    if not method or method.translate(None, TOKEN_CHARS):
        raise HttpError(400, "the method is not a token")
    if not target or target.translate(None, TARGET_CHARS):
        raise HttpError(400, "the target has characters that are not allowed")

    length = None
    hosts = 0
    expect_continue = False
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        # No space before the colon, none at the start (obsolete line folding): RFC 9112
        # says reject both, because proxies disagree on what they mean (request smuggling).
        if not colon or not name or name.translate(None, TOKEN_CHARS):
            raise HttpError(400, "a header line is not NAME: VALUE")
        value = value.strip(b" \t")
        if value.translate(None, VALUE_CHARS):
            raise HttpError(400, "a header value has control characters")
        name = name.lower()
        if name == b"host":
            hosts += 1
        elif name == b"connection":
            options = [option.strip() for option in value.lower().split(b",")]
            if b"close" in options:
                keep_alive = False
            elif b"keep-alive" in options:
                keep_alive = True
        elif name == b"content-length":
            # Digits only, at most 18 of them: no sign, no list, no int() surprises. Two
            # different lengths would let two parsers see two different requests.
            if not value.isdigit() or len(value) > 18:
                raise HttpError(400, "Content-Length must be a number")
            if length is not None and int(value) != length:
                raise HttpError(400, "two different Content-Length headers")
            length = int(value)
        elif name == b"transfer-encoding":
            raise HttpError(501, "Transfer-Encoding is not implemented; send Content-Length")
        elif name == b"expect" and value.lower() == b"100-continue":
            expect_continue = True
    if version == b"HTTP/1.1" and hosts != 1:
        raise HttpError(400, "an HTTP/1.1 request needs exactly one Host header")

    path = target
    if target.startswith((b"http://", b"https://")):  # absolute form, as sent to proxies
        slash = target.find(b"/", target.find(b"//") + 2)
        path = target[slash:] if slash >= 0 else b"/"
    path = path.partition(b"?")[0]
    if not path.startswith(b"/"):
        raise HttpError(400, "the target must start with /")
    return Request(method, target, version, path, keep_alive, length or 0, expect_continue)


def ends_with_bare_lf(inbox, start, end):
    """True if the head from `start` ends in an empty line that uses a bare LF, before the
    CRLF CRLF at `end` (or anywhere, if end is -1: none has come yet).

    RFC 9112 2.2 lets a recipient take a lone LF as the end of a line; under that rule a
    head also ends at LF LF, or at a line ended by LF and then CR LF. We refuse bare LF
    (400), as we refuse obsolete line folding: when a proxy and the server behind it
    disagree on where a line or a head ends, one request to the proxy can be two requests
    to the server (request smuggling). But the end must be seen at once: a server that
    looks only for CRLF CRLF leaves such a client waiting, unanswered, until its timeout.
    """
    stop = len(inbox) if end < 0 else end + 2  # an LF just before the CRLF CRLF counts too
    return inbox.find(b"\n\n", start, stop) >= 0 or inbox.find(b"\n\r\n", start, stop) >= 0


def build_response(status, headers, body, date, head_only=False):
    """The bytes of one response; Content-Length always, so keep-alive framing holds."""
    status_line = b"HTTP/1.1 %d %s\r\n" % (status, REASONS[status].encode())
    return b"".join((status_line, b"Server: ", SERVER_NAME, b"\r\nDate: ", date,
                     b"\r\nContent-Length: %d\r\n" % len(body), headers, b"\r\n",
                     b"" if head_only else body))


class Connection:
    """Everything the server knows about one client, in one place."""

    def __init__(self, sock):
        self.sock = sock
        self.inbox = bytearray()  # received bytes not yet parsed (at most one request)
        self.outbox = bytearray()  # response bytes the kernel has not taken yet
        self.request = None  # a parsed head whose body is still arriving
        self.peer_done = False  # the client sent EOF
        self.closing = False  # the last response is queued: read no more requests
        self.lingering = False  # we half-closed; reading and dropping until the client's EOF
        self.throttled = False  # outbox passed HIGH_WATER: stop reading until LOW_WATER
        self.interest = READABLE  # what epoll watches for now
        self.served = 0  # requests answered on this connection

    def wanted(self):
        """The interest mask this state calls for: derived, never edited by hand."""
        mask = 0
        # After EOF, a level-triggered EPOLLIN would be reported forever: drop it.
        if not self.peer_done and not self.throttled and (self.lingering or not self.closing):
            mask |= READABLE
        if self.outbox:  # ask for EPOLLOUT only while there is something to write
            mask |= WRITABLE
        return mask


class HttpServer:
    """One epoll loop: the listener, every client, the timers, and the signal wake-up."""

    def __init__(self, listener, trace=False, idle_timeout=IDLE_TIMEOUT,
                 max_header_bytes=MAX_HEADER_BYTES, max_body_bytes=MAX_BODY_BYTES,
                 keep_alive=True, max_requests=0):
        self.listener = listener
        self.max_requests = max_requests  # 0: any number of requests per connection
        self.trace = trace
        self.idle_timeout = idle_timeout
        self.max_header_bytes = max_header_bytes
        self.max_body_bytes = max_body_bytes
        self.keep_alive = keep_alive
        self.conns = {}  # fd -> Connection
        # The timers. Every deadline is "now + idle_timeout", so deadlines expire in the
        # order they were set: an OrderedDict kept in that order (move_to_end on reset) is
        # a priority queue with O(1) operations, and its first entry is the nearest one.
        # (With timeouts of different lengths you need a heap or a tree, as nginx has.)
        self.deadlines = collections.OrderedDict()  # fd -> monotonic time to give up
        self.now = time.monotonic()
        self.date_second = None
        self.date = b""
        self.hello_cache = {}  # (head_only, connection header) -> complete response bytes
        self.epoll = select.epoll()
        self.epoll.register(listener.fileno(), READABLE)
        self.listener_interest = READABLE
        self.accept_paused = False  # out of fds: the listener is not watched (pause_accept)
        self.retry_accept_at = 0.0  # when to try accept again if no connection closes first
        # The self-pipe: a signal handler cannot touch the loop, but Python writes the
        # signal number into this socket, which wakes epoll_wait like any client would.
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        signal.set_wakeup_fd(self.wake_w.fileno(), warn_on_full_buffer=False)
        self.epoll.register(self.wake_r.fileno(), READABLE)
        self.running = True

    def log(self, text):
        if self.trace:
            print(text, flush=True)

    # -- time -----------------------------------------------------------------------------

    def tick(self):
        """Read the clocks once per wake-up, not once per request."""
        self.now = time.monotonic()
        second = int(time.time())
        if second != self.date_second:  # the Date header changes once a second
            self.date_second = second
            self.date = formatdate(second, usegmt=True).encode()
            self.hello_cache.clear()

    def reset_deadline(self, conn):
        fd = conn.sock.fileno()
        self.deadlines[fd] = self.now + self.idle_timeout
        self.deadlines.move_to_end(fd)

    def poll_timeout(self):
        """Seconds until the nearest deadline: how long epoll_wait may sleep (-1: forever)."""
        nearest = next(iter(self.deadlines.values()), None)  # the first one is the nearest
        if self.accept_paused and (nearest is None or self.retry_accept_at < nearest):
            nearest = self.retry_accept_at  # retrying a paused accept is a timer too
        if nearest is None:
            return -1  # no connections, no timers: sleep until something happens
        return max(0.0, nearest - time.monotonic())

    def expire(self):
        while self.deadlines:
            fd, deadline = next(iter(self.deadlines.items()))
            if deadline > self.now:
                return
            conn = self.conns[fd]
            if (conn.inbox or conn.request) and not conn.closing:
                # A half-sent request: say why, in one best-effort send, and go.
                self.queue_error(conn, HttpError(408, "the request did not arrive in time"))
                try:
                    conn.sock.send(conn.outbox)
                except OSError:
                    pass
                self.close(conn, "request timed out")
            else:
                self.close(conn, "idle timeout")

    # -- the handlers ---------------------------------------------------------------------

    def on_accept(self):
        # The listener is level-triggered, but taking the whole queue now saves wake-ups.
        while True:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:  # queue drained
                return
            except ConnectionAbortedError:  # this client gave up while queued: next one
                continue
            except OSError as e:
                if e.errno in OUT_OF_RESOURCES:
                    self.pause_accept(e)
                else:
                    self.log(f"accept failed: {e.strerror}")
                return
            sock.setblocking(False)
            # Each response goes out in one send; Nagle's algorithm would only delay it.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Connection(sock)
            self.conns[sock.fileno()] = conn
            self.epoll.register(sock.fileno(), conn.interest)
            self.reset_deadline(conn)

    def pause_accept(self, error):
        # The trap: accept failed for want of an fd or of memory, and the client is still in
        # the kernel's queue, so the listener is still readable. Level-triggered, epoll_wait
        # reports it again at once, every pass, and every accept fails again: a loop that
        # uses 100% of a CPU and serves nobody until an fd is freed. (Edge-triggered, the
        # opposite: no new report for the clients already queued, a stall.) So stop watching
        # the listener; close() resumes when it frees an fd, and RETRY_ACCEPT bounds the
        # pause (ENFILE and ENOMEM are freed by other processes, which tell us nothing).
        self.log(f"accept paused: {error.strerror}")
        self.accept_paused = True
        self.retry_accept_at = self.now + RETRY_ACCEPT
        self.update_listener()

    def resume_accept(self):
        if self.accept_paused:
            self.log("accept resumed")
            self.accept_paused = False
            self.update_listener()

    def on_readable(self, conn):
        if conn.throttled:  # reported for EPOLLHUP/ERR only; the send path will tell
            return
        try:
            data = conn.sock.recv(RECV_SIZE)
        except BlockingIOError:  # a spurious wake-up: nothing to read after all
            return
        except OSError as e:  # ECONNRESET and friends: this client is gone
            self.close(conn, e.strerror)
            return
        if not data:  # EOF: the client sends no more, but it may still read our answers
            conn.peer_done = True
            if conn.lingering or not conn.outbox:
                self.close(conn, "client finished")
            return
        if conn.lingering or conn.closing:
            return  # what comes after the last answer is read only to be dropped
        conn.inbox += data
        self.handle_requests(conn)
        self.on_writable(conn)  # try to send now; EPOLLOUT is only for what is left

    def handle_requests(self, conn):
        """Answer every complete request in the inbox, in order; keep an incomplete tail."""
        inbox = conn.inbox
        pos = 0
        answered = 0
        try:
            while not conn.closing:
                request = conn.request
                if request is None:
                    while inbox.startswith(b"\r\n", pos):  # RFC 9112 2.2: skip stray CRLFs
                        pos += 2
                    end = inbox.find(END_OF_HEAD, pos)
                    if ends_with_bare_lf(inbox, pos, end):
                        raise HttpError(400, "lines must end with CRLF")
                    if end < 0:  # the head is not complete yet
                        if len(inbox) - pos > self.max_header_bytes:
                            raise HttpError(431, "the request head is over the limit")
                        break
                    if end - pos > self.max_header_bytes:
                        raise HttpError(431, "the request head is over the limit")
                    request = parse_head(bytes(inbox[pos:end]))
                    pos = end + len(END_OF_HEAD)
                    if request.length > self.max_body_bytes:
                        raise HttpError(413, "the body is over the limit")
                    if request.path not in ROUTES:
                        pass  # 404 below, after the body (if any) has been read past
                    elif request.method not in ROUTES[request.path]:
                        allowed = b", ".join(ROUTES[request.path])
                        raise HttpError(405, "method not allowed here",
                                        b"Allow: " + allowed + b"\r\n")
                    conn.request = request
                if len(inbox) - pos < request.length:  # the body is still on its way
                    if request.expect_continue:  # the client waits for our go-ahead
                        conn.outbox += b"HTTP/1.1 100 Continue\r\n\r\n"
                        request.expect_continue = False
                    break
                body = bytes(inbox[pos:pos + request.length])
                pos += request.length
                conn.request = None
                self.respond(conn, request, body)
                answered += 1
                if len(conn.outbox) >= HIGH_WATER:
                    # The client is not reading. Stop here: the rest waits in the inbox,
                    # and we read no more until the outbox drains.
                    conn.throttled = True
                    break
        except HttpError as error:
            self.queue_error(conn, error)
            pos = len(inbox)
        del inbox[:pos]  # one cut per recv, however many requests it held
        if answered:
            self.reset_deadline(conn)  # a complete request: the idle clock starts over

    def respond(self, conn, request, body):
        keep_alive = request.keep_alive and self.keep_alive
        # exercise: the starting point has the "#|" lines, not the answer below
        #| # TODO: count this request in conn.served; when self.max_requests is not 0 and this
        #| # TODO: is the connection's max_requests-th request, set keep_alive to False.
        # answer:
        conn.served += 1
        if self.max_requests and conn.served >= self.max_requests:
            keep_alive = False  # the last one: "Connection: close", then finish()
        # end of the answer
        if not keep_alive:
            connection = b"Connection: close\r\n"
        elif request.version == b"HTTP/1.0":  # HTTP/1.0 needs the promise spelled out
            connection = b"Connection: keep-alive\r\n"
        else:  # for HTTP/1.1 it is the default
            connection = b""
        if request.path == b"/":
            head_only = request.method == b"HEAD"
            response = self.hello_cache.get((head_only, connection))
            if response is None:
                response = build_response(200, b"Content-Type: text/plain\r\n" + connection,
                                          HELLO, self.date, head_only)
                self.hello_cache[(head_only, connection)] = response
            status = 200
        elif request.path == b"/echo":
            response = build_response(
                200, b"Content-Type: application/octet-stream\r\n" + connection, body,
                self.date)
            status = 200
        else:
            status = 404
            response = build_response(404, b"Content-Type: text/plain\r\n" + connection,
                                      b"404 Not Found: no such path here\n", self.date)
        conn.outbox += response
        if self.trace:
            # Both were checked to be visible ASCII by the parser; errors= keeps it so.
            method = request.method.decode("ascii", errors="replace")
            target = request.target.decode("ascii", errors="replace")
            self.log(f"{method} {target} -> {status}")
        if not keep_alive:
            conn.closing = True

    def queue_error(self, conn, error):
        body = f"{error.status} {REASONS[error.status]}: {error.detail}\n".encode()
        conn.outbox += build_response(
            error.status, b"Content-Type: text/plain\r\nConnection: close\r\n"
            + error.extra_headers, body, self.date)
        conn.closing = True
        conn.request = None
        self.log(f"error -> {error.status} ({error.detail})")

    def on_writable(self, conn):
        while conn.outbox:
            try:
                sent = conn.sock.send(conn.outbox)
            except BlockingIOError:  # socket buffer full: EPOLLOUT reports when it is not
                break
            except OSError as e:  # EPIPE, ECONNRESET: the client stopped listening
                self.close(conn, e.strerror)
                return
            del conn.outbox[:sent]  # bytearray drops a prefix without copying the rest
            if conn.outbox:
                self.reset_deadline(conn)  # a slow reader that makes progress may stay
        if conn.throttled and len(conn.outbox) <= LOW_WATER:
            conn.throttled = False
            self.handle_requests(conn)  # answer what waited in the inbox meanwhile
            if conn.outbox:
                return self.on_writable(conn)
        if not conn.outbox and (conn.closing or conn.peer_done) and not conn.lingering:
            self.finish(conn)

    def finish(self, conn):
        """Everything owed is delivered: end the connection without losing the last answer.

        close() with unread bytes in the receive buffer makes the kernel send a reset
        (RFC 1122 4.2.2.13), and a reset can destroy our last response before the client has
        read it. So: half-close (the client sees EOF after our answer), keep reading and
        dropping until the client's EOF, and let the idle timeout bound the wait.
        """
        if conn.peer_done:
            self.close(conn, "client finished")
            return
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError as e:
            self.close(conn, e.strerror)
            return
        conn.lingering = True
        self.reset_deadline(conn)

    def close(self, conn, why):
        fd = conn.sock.fileno()
        self.log(f"close: {why}")
        del self.conns[fd]
        self.deadlines.pop(fd, None)
        self.epoll.unregister(fd)  # before close: afterwards the fd number means nothing
        conn.sock.close()
        self.resume_accept()  # an fd is free again: a client still queued may have it

    def update_interest(self, conn):
        wanted = conn.wanted()
        if wanted != conn.interest:  # one epoll_ctl only when something changed
            self.epoll.modify(conn.sock.fileno(), wanted)
            conn.interest = wanted

    def update_listener(self):
        # The listener's interest, derived from state like a connection's. Adding READABLE
        # back (EPOLL_CTL_MOD) re-checks readiness on the spot: clients queued meanwhile are
        # reported at once.
        wanted = 0 if self.accept_paused else READABLE
        if wanted != self.listener_interest:
            self.epoll.modify(self.listener.fileno(), wanted)
            self.listener_interest = wanted

    # -- the loop -------------------------------------------------------------------------

    def serve(self):
        listen_fd, wake_fd = self.listener.fileno(), self.wake_r.fileno()
        while self.running:
            # Sleep until a socket is ready or the nearest deadline comes, whichever first.
            events = self.epoll.poll(self.poll_timeout())
            self.tick()
            for fd, ev in events:
                if fd == listen_fd:
                    self.on_accept()
                elif fd == wake_fd:
                    self.running = False
                else:
                    self.dispatch(fd, ev)
            self.expire()
            if self.accept_paused and self.now >= self.retry_accept_at:
                self.resume_accept()  # no connection closed meanwhile: try anyway

    def dispatch(self, fd, ev):
        conn = self.conns.get(fd)
        if conn is None:  # closed by an earlier event in this same batch
            return
        if ev & (READABLE | TROUBLE):
            self.on_readable(conn)
        if ev & (WRITABLE | TROUBLE) and self.conns.get(fd) is conn:
            self.on_writable(conn)
        if self.conns.get(fd) is conn:
            self.update_interest(conn)

    def shutdown(self):
        for conn in list(self.conns.values()):
            self.close(conn, "server stopping")
        signal.set_wakeup_fd(-1)
        self.epoll.close()
        self.listener.close()
        self.wake_r.close()
        self.wake_w.close()


# -- the program ------------------------------------------------------------------------

def fail(message):
    """A mistake of the user: one clear line, status 2, no traceback."""
    print(f"{sys.argv[0]}: error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_args():
    parser = argparse.ArgumentParser(description="HTTP/1.1 responder on epoll.")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=9004, help="0 takes any free port")
    parser.add_argument("--trace", action="store_true",
                        help="print one line per answered request")
    parser.add_argument("--idle-timeout", type=float, default=IDLE_TIMEOUT, metavar="S",
                        help=f"close a connection that has no complete request for S "
                             f"seconds (default {IDLE_TIMEOUT:g})")
    parser.add_argument("--max-header-bytes", type=int, default=MAX_HEADER_BYTES,
                        metavar="N", help=f"largest request head (default {MAX_HEADER_BYTES})")
    parser.add_argument("--max-body-bytes", type=int, default=MAX_BODY_BYTES, metavar="N",
                        help=f"largest request body (default {MAX_BODY_BYTES})")
    parser.add_argument("--no-keep-alive", action="store_true",
                        help="the classic design: close the connection after every answer")
    parser.add_argument("--max-requests", type=int, default=0, metavar="N",
                        help="end a connection after its N-th request (default 0: no limit)")
    parser.error = lambda message: fail(f"{message} (see --help)")
    args = parser.parse_args()
    if not 0 <= args.port <= 65535:
        fail(f"--port must be between 0 and 65535, not {args.port}")
    if not args.idle_timeout > 0:
        fail("--idle-timeout must be more than 0 seconds")
    if args.max_header_bytes < 64:
        fail("--max-header-bytes must be at least 64")
    if args.max_body_bytes < 0:
        fail("--max-body-bytes must not be negative")
    if args.max_requests < 0:
        fail("--max-requests must not be negative")
    return args


def listen(host, port):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    # Lets a restarted server bind while old connections linger in TIME_WAIT; it does not
    # let two servers listen on one port (that still fails with EADDRINUSE).
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
        listener.listen(BACKLOG)
    except OSError as e:
        listener.close()
        busy = e.errno == errno.EADDRINUSE
        hint = " (is another server using it? try --port 0)" if busy else ""
        fail(f"cannot listen on {host}:{port}: {e.strerror}{hint}")
    listener.setblocking(False)
    return listener


def main():
    args = parse_args()
    if not hasattr(select, "epoll"):
        fail(f"epoll exists only on Linux, and this is {sys.platform}; "
             "use a Linux machine, VM, WSL2 or container")
    listener = listen(args.host, args.port)
    server = HttpServer(listener, trace=args.trace, idle_timeout=args.idle_timeout,
                        max_header_bytes=args.max_header_bytes,
                        max_body_bytes=args.max_body_bytes, keep_alive=not args.no_keep_alive,
                        max_requests=args.max_requests)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: None)  # the wake-up fd does the work
    host, port = listener.getsockname()[:2]
    print(f"listening on {host}:{port}", flush=True)
    try:
        server.serve()
    finally:
        server.shutdown()


if __name__ == "__main__":
    main()
