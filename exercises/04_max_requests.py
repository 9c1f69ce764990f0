#!/usr/bin/env python3
"""Exercise 04: at most N requests per keep-alive connection (lesson 04's responder).

Your task: with --max-requests N (N > 0), answer the N-th request on a connection with
`Connection: close` and then end that connection, as nginx's keepalive_requests does, so
that no client holds one connection forever. 0, the default, means no limit. The lines to
change are marked TODO in exercises/04_max_requests.py; `make check 04` (or
`.venv/bin/python exercises/check.py 04`) tells you when it works.
solutions/04_max_requests.py is the finished version, with the starting point's lines beside
the answer. The exercise listens on a port of its own, 9014, so that it can run beside the
lesson; with --max-requests 2, curl's second answer says `Connection: close`, and its third
request needs a new connection:

    python3 exercises/04_max_requests.py --max-requests 2    # listening on 127.0.0.1:9014
    curl -v http://127.0.0.1:9014/ http://127.0.0.1:9014/ http://127.0.0.1:9014/

Lesson 04 says the rest:

    python3 lessons/04_http_responder.py        # listening on 127.0.0.1:9004
    curl -v http://127.0.0.1:9004/
    curl --data-binary 'hi there' http://127.0.0.1:9004/echo

The tutorials' responder reads until a blank line, writes a canned answer and closes. Real
clients send requests in pieces or many at once (pipelining), keep the connection open for the
next one (keep-alive), send bad input, or stop halfway. So this server parses from a buffer, in
order; answers bad input with a clear status, then closes gracefully; ends idle and half-sent
connections with timers in the loop; and bounds each connection's memory. GET and HEAD of /
answer "Hello, world!", POST /echo the request's body. The loop is level-triggered, with
lesson 01's write path; the server comes first, the HTTP parsing after. --trace prints a line
per answer; --no-keep-alive closes after every answer.
"""

import argparse
import collections
import contextlib
import errno
import re
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

HELLO = b"Hello, world!"
NOT_FOUND = b"404 Not Found: no such path here\n"
ROUTES = {b"/": (b"GET", b"HEAD"), b"/echo": (b"POST",)}  # path -> the methods it allows
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"  # the go-ahead for `Expect: 100-continue`
PLAIN_TEXT = b"Content-Type: text/plain\r\n"


class Connection:
    """Everything the server knows about one client, in one place."""

    def __init__(self, sock):
        self.sock = sock
        self.inbox = bytearray()  # received bytes not parsed yet
        self.outbox = bytearray()  # response bytes the kernel has not taken yet
        self.request = None  # a parsed head whose body is still arriving
        self.peer_done = False  # the client sent EOF
        self.closing = False  # the last response is queued: answer no more requests
        self.lingering = False  # we half-closed; reading and dropping until the client's EOF
        self.throttled = False  # outbox passed HIGH_WATER: stop reading until LOW_WATER
        self.interest = READABLE  # what epoll watches for now
        self.closed = False
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

    def __init__(self, listener, options):
        self.listener = listener
        self.options = options  # the flags: trace, idle_timeout, max_header_bytes, ...
        self.conns = {}  # fd -> Connection
        # The timers. Each is "now + idle_timeout", so they expire in the order they are set:
        # an OrderedDict kept in that order (move_to_end) is a queue with O(1) steps, no heap.
        self.deadlines = collections.OrderedDict()  # fd -> monotonic time to give up
        self.now = time.monotonic()
        self.date_second, self.date = None, b""  # the Date header, once per second (tick)
        self.accept_paused = False  # out of fds: the listener is not watched (pause_accept)
        self.retry_accept_at = 0.0  # when to try accept again if no connection closes first
        self.epoll = select.epoll()
        self.epoll.register(listener.fileno(), READABLE)
        # The self-pipe: a signal handler cannot touch the loop, but Python writes the
        # signal number into this socket, which wakes epoll_wait like any client would.
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        signal.set_wakeup_fd(self.wake_w.fileno(), warn_on_full_buffer=False)
        self.epoll.register(self.wake_r.fileno(), READABLE)
        self.running = True

    def log(self, text):
        if self.options.trace:
            print(text, flush=True)

    # -- the handlers -------------------------------------------------------------------

    def on_accept(self):
        # Level-triggered: one accept per event is enough. If more clients are queued,
        # the listener is still readable and the next epoll_wait reports it again.
        try:
            sock, _ = self.listener.accept()
        except BlockingIOError:  # another event got there first
            return
        except OSError as e:
            if e.errno in OUT_OF_RESOURCES:
                self.pause_accept(e)
            else:  # the client gave up already (ECONNABORTED): the next one is reported
                self.log(f"accept failed: {e.strerror}")
            return
        sock.setblocking(False)
        # Nagle's algorithm would hold back the answer sent after a 100 Continue until acked.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = Connection(sock)
        self.conns[sock.fileno()] = conn
        self.epoll.register(sock.fileno(), conn.interest)
        self.reset_deadline(conn)

    def pause_accept(self, error):
        # The trap: the client is still queued, so the listener stays readable and epoll
        # reports it on every pass while every accept fails: 100% of a CPU, nobody served. So
        # stop watching it until close() frees an fd, or until RETRY_ACCEPT has passed (other
        # processes free ENFILE and ENOMEM).
        self.log(f"accept paused: {error.strerror}")
        self.accept_paused, self.retry_accept_at = True, self.now + RETRY_ACCEPT
        self.epoll.modify(self.listener.fileno(), 0)

    def resume_accept(self):
        # EPOLL_CTL_MOD checks readiness on the spot: clients queued meanwhile are reported.
        if self.accept_paused:
            self.log("accept resumed")
            self.accept_paused = False
            self.epoll.modify(self.listener.fileno(), READABLE)

    def on_readable(self, conn):
        # One recv per event, however much is waiting: level-triggering reports the rest.
        try:
            data = conn.sock.recv(RECV_SIZE)
        except BlockingIOError:  # a spurious wake-up: nothing to read after all
            return
        except OSError as e:  # ECONNRESET and friends: this client is gone
            self.close(conn, e.strerror)
            return
        if not data:  # EOF: the client sends no more, but it may still read our answers
            conn.peer_done = True
            if not conn.outbox:
                self.close(conn, "client finished")
            return
        if conn.closing:  # what comes after the last answer is read only to be dropped
            return
        conn.inbox += data
        self.handle_requests(conn)
        self.on_writable(conn)  # try to send now; EPOLLOUT is only for what is left

    def handle_requests(self, conn):
        """Answer every complete request in the inbox, in order; keep an incomplete tail."""
        inbox, pos = conn.inbox, 0
        try:
            while not conn.closing:
                if conn.request is None:
                    head, pos = take_head(inbox, pos, self.options.max_header_bytes)
                    if head is None:  # its empty line has not come yet
                        break
                    conn.request = parse_head(head, self.options.max_body_bytes)
                    if conn.request.expect_continue and len(inbox) - pos < conn.request.length:
                        conn.outbox += CONTINUE  # the client waits for it to send the body
                request = conn.request
                if len(inbox) - pos < request.length:  # the body is still on its way
                    break
                conn.request = None
                self.respond(conn, request, bytes(inbox[pos:pos + request.length]))
                pos += request.length
                if len(conn.outbox) >= HIGH_WATER:
                    # The client is not reading: the rest waits for LOW_WATER (on_writable).
                    conn.throttled = True
                    break
        except HttpError as error:
            self.refuse(conn, error)
            pos = len(inbox)
        del inbox[:pos]  # one cut per recv, however many requests it held

    def respond(self, conn, request, body):
        if request.path == b"/":
            status, headers, body = 200, PLAIN_TEXT, HELLO
        elif request.path == b"/echo":
            status, headers = 200, b"Content-Type: application/octet-stream\r\n"
        else:
            status, headers, body = 404, PLAIN_TEXT, NOT_FOUND
        keep_alive = request.keep_alive and self.options.keep_alive
        # TODO: count this request in conn.served; when self.options.max_requests is not 0
        # TODO: and this is the connection's max_requests-th request, set keep_alive to False.
        if keep_alive and request.version == b"HTTP/1.0":  # 1.0 needs the promise spelled out
            headers += b"Connection: keep-alive\r\n"
        self.answer(conn, status, headers, body, last=not keep_alive,
                    head_only=request.method == b"HEAD")
        self.reset_deadline(conn)  # a complete request: the idle clock starts over
        if self.options.trace:  # method and target are checked to be visible ASCII
            line = b"%s %s -> %d" % (request.method, request.target, status)
            self.log(line.decode("ascii", errors="replace"))

    def refuse(self, conn, error):
        body = b"%d %s: %s\n" % (error.status, REASONS[error.status], error.detail.encode())
        # The last answer: where the next request would start is unknown now.
        self.answer(conn, error.status, PLAIN_TEXT + error.extra_headers, body, last=True)
        conn.request = None
        self.log(f"error -> {error.status} ({error.detail})")

    def answer(self, conn, status, headers, body, last, head_only=False):
        """Queue one response, framed by Content-Length, so that keep-alive holds."""
        if last:  # the client is told, and no request after this one is answered
            headers += b"Connection: close\r\n"
            conn.closing = True
        conn.outbox += b"HTTP/1.1 %d %s\r\nServer: epoll-workbook\r\nDate: %s\r\n" % (
            status, REASONS[status], self.date)
        conn.outbox += b"Content-Length: %d\r\n%s\r\n" % (len(body), headers)
        if not head_only:  # HEAD: the same head as GET, no body
            conn.outbox += body

    def on_writable(self, conn):
        if conn.outbox:
            try:
                sent = conn.sock.send(conn.outbox)
            except BlockingIOError:  # buffer full: EPOLLOUT reports once there is room again
                sent = 0
            except OSError as e:  # EPIPE, ECONNRESET: the client stopped listening
                self.close(conn, e.strerror)
                return
            del conn.outbox[:sent]  # bytearray drops a prefix without copying the rest
            if sent and conn.outbox:
                self.reset_deadline(conn)  # a slow reader that makes progress may stay
        if conn.throttled and len(conn.outbox) <= LOW_WATER:
            conn.throttled = False  # read again, and first answer what waited in the inbox
            self.handle_requests(conn)  # (its answers go out on the next EPOLLOUT)
        if not conn.outbox and (conn.closing or conn.peer_done) and not conn.lingering:
            self.finish(conn)

    def finish(self, conn):
        # All owed is delivered. The trap: close() with unread input sends a reset (RFC 1122
        # 4.2.2.13), which can destroy the last answer before the client reads it. So half-close
        # (the client sees EOF after the answer), then read and drop until its EOF or timeout.
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
        conn.closed = True
        self.epoll.unregister(fd)  # before close: afterwards the fd number means nothing
        conn.sock.close()
        self.resume_accept()  # an fd is free again: a client still queued may have it

    def update_interest(self, conn):
        wanted = conn.wanted()
        if wanted != conn.interest:  # one epoll_ctl only when something changed
            self.epoll.modify(conn.sock.fileno(), wanted)
            conn.interest = wanted

    # -- the timers ---------------------------------------------------------------------

    def tick(self):
        """Read the clocks once per wake-up, not once per request."""
        self.now = time.monotonic()
        second = int(time.time())
        if second != self.date_second:  # the Date header changes once a second
            self.date_second, self.date = second, formatdate(second, usegmt=True).encode()

    def reset_deadline(self, conn):
        fd = conn.sock.fileno()
        self.deadlines[fd] = self.now + self.options.idle_timeout
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
            half_sent = (conn.inbox or conn.request) and not conn.closing
            if half_sent:  # say why in one best-effort send, without waiting for EPOLLOUT
                self.refuse(conn, HttpError(408, "the request did not arrive in time"))
                with contextlib.suppress(OSError):
                    conn.sock.send(conn.outbox)
            self.close(conn, "request timed out" if half_sent else "idle timeout")

    # -- the loop -----------------------------------------------------------------------

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
        if ev & (WRITABLE | TROUBLE) and not conn.closed:
            self.on_writable(conn)
        if not conn.closed:
            self.update_interest(conn)

    def shutdown(self):
        for conn in list(self.conns.values()):
            self.close(conn, "server stopping")
        signal.set_wakeup_fd(-1)
        for each in (self.epoll, self.listener, self.wake_r, self.wake_w):
            each.close()


# -- HTTP/1.1 from bytes (RFC 9112) -----------------------------------------------------
# Nothing here decodes what a client sent: every check compares bytes, so no input can raise
# anything but HttpError.

TOKEN = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"  # a method or a header name (RFC 9110 5.6.2)
# METHOD TARGET VERSION, one space apart; the target is visible ASCII only.
REQUEST_LINE = re.compile(rb"(%s) ([!-~]+) (HTTP/[0-9]\.[0-9])" % TOKEN)
# NAME: VALUE. No space before the colon, none starting a line (obsolete folding): RFC 9112
# says reject both, as proxies disagree on their meaning (request smuggling). The value: visible
# ASCII, space, tab, bytes >= 0x80 (RFC 9110 5.5); no control byte (NUL, lone CR or LF, DEL).
HEADER = re.compile(rb"(%s):([^\x00-\x08\x0a-\x1f\x7f]*)" % TOKEN)
BARE_LF = re.compile(rb"\n\r?\n")  # LF LF or LF CR LF: a head's end under the lone-LF rule
REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed",
           408: b"Request Timeout", 413: b"Content Too Large",
           431: b"Request Header Fields Too Large", 501: b"Not Implemented",
           505: b"HTTP Version Not Supported"}
# One parsed request head. length: the body's bytes, from Content-Length (0 without one).
Request = collections.namedtuple(
    "Request", "method target version path keep_alive length expect_continue")


class HttpError(Exception):
    """A request we refuse: answered with `status`, then the connection is closed."""

    def __init__(self, status, detail, extra_headers=b""):
        super().__init__(detail)
        self.status, self.detail, self.extra_headers = status, detail, extra_headers


def take_head(inbox, pos, limit):
    """(the head that starts at pos, the position after its empty line), or (None, pos)."""
    while inbox.startswith(b"\r\n", pos):  # RFC 9112 2.2: skip empty lines before a request
        pos += 2
    end = inbox.find(b"\r\n\r\n", pos)
    stop = end if end >= 0 else len(inbox)  # the head's end, or the end of what came of it
    # RFC 9112 2.2 lets a lone LF end a line, so a head could also end at LF LF or LF CR LF. We
    # refuse bare LF as we refuse line folding (a proxy and a server that disagree on where a
    # head ends turn one request into two), and at once: not after waiting for CRLF CRLF.
    if BARE_LF.search(inbox, pos, stop):
        raise HttpError(400, "lines must end with CRLF")
    if stop - pos > limit:
        raise HttpError(431, "the request head is over the limit")
    return (None, pos) if end < 0 else (bytes(inbox[pos:end]), end + 4)


def parse_head(head, max_body):
    """The bytes before the empty line as a Request, or HttpError: all we refuse before a body."""
    lines = head.split(b"\r\n")
    match = REQUEST_LINE.fullmatch(lines[0])
    if not match:
        raise HttpError(400, "the request line must be METHOD TARGET VERSION")
    method, target, version = match.groups()
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise HttpError(505, "only HTTP/1.0 and HTTP/1.1 are spoken here")
    fields = {}  # lower-case name -> its values, in order
    for line in lines[1:]:
        header = HEADER.fullmatch(line)
        if not header:
            raise HttpError(400, "a header line is not NAME: VALUE of visible characters")
        fields.setdefault(header[1].lower(), []).append(header[2].strip(b" \t"))
    if version == b"HTTP/1.1" and len(fields.get(b"host", ())) != 1:
        raise HttpError(400, "an HTTP/1.1 request needs exactly one Host header")
    if b"transfer-encoding" in fields:
        raise HttpError(501, "Transfer-Encoding is not implemented; send Content-Length")
    length = None
    for value in fields.get(b"content-length", ()):
        # Digits only, at most 18 of them: no sign, no list, no int() surprises. Two
        # different lengths would let two parsers see two different requests.
        if not value.isdigit() or len(value) > 18:
            raise HttpError(400, "Content-Length must be a number")
        if length is not None and int(value) != length:
            raise HttpError(400, "two different Content-Length headers")
        length = int(value)
    path = target
    if target.startswith((b"http://", b"https://")):  # absolute form, as sent to proxies
        slash = target.find(b"/", target.find(b"//") + 2)
        path = target[slash:] if slash >= 0 else b"/"
    path = path.partition(b"?")[0]
    if not path.startswith(b"/"):
        raise HttpError(400, "the target must start with /")
    # Refused now, before the body is read, as they would be after it anyway.
    length = length or 0
    if length > max_body:
        raise HttpError(413, "the body is over the limit")
    allowed = ROUTES.get(path)
    if allowed and method not in allowed:  # (an unknown path: 404 after the body)
        raise HttpError(405, "method not allowed here",
                        b"Allow: " + b", ".join(allowed) + b"\r\n")
    # HTTP/1.1 is persistent unless someone says close; HTTP/1.0 only if the client asks.
    keep_alive = version == b"HTTP/1.1"
    if b"connection" in fields:
        options = [part.strip() for part in b",".join(fields[b"connection"]).lower().split(b",")]
        keep_alive = b"close" not in options and (keep_alive or b"keep-alive" in options)
    expect_continue = fields.get(b"expect", [b""])[0].lower() == b"100-continue"
    return Request(method, target, version, path, keep_alive, length, expect_continue)


# -- the program ------------------------------------------------------------------------

def fail(message):
    """A mistake of the user: one clear line, status 2, no traceback."""
    print(f"{sys.argv[0]}: error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_args():
    parser = argparse.ArgumentParser(description="HTTP/1.1 responder on epoll.")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=9014, help="0 takes any free port")
    parser.add_argument("--trace", action="store_true", help="print a line per answered request")
    parser.add_argument("--idle-timeout", type=float, default=IDLE_TIMEOUT, metavar="S",
                        help=f"close a connection idle for S seconds (default {IDLE_TIMEOUT:g})")
    parser.add_argument("--max-header-bytes", type=int, default=MAX_HEADER_BYTES,
                        metavar="N", help=f"largest request head (default {MAX_HEADER_BYTES})")
    parser.add_argument("--max-body-bytes", type=int, default=MAX_BODY_BYTES, metavar="N",
                        help=f"largest request body (default {MAX_BODY_BYTES})")
    parser.add_argument("--no-keep-alive", dest="keep_alive", action="store_false",
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
    server = HttpServer(listener, args)
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
