#!/usr/bin/env python3
"""Exercise 11: put the short-read rule back.

This is lesson 11's server, except for one thing: its read_batch() reads until recv() raises
BlockingIOError, always. For a 64-byte message that is two recv calls, the second only to
hear EAGAIN. epoll(7) allows a shortcut for stream sockets: a read that returned fewer bytes
than asked proves the socket is empty for now, so the next read can wait for the next report.

Change the lines marked TODO in exercises/11_short_read.py so that read_batch() stops after
a short read, from --step short-read on. Mind the one case where it must not: edge-triggered,
a client's EOF that came with the data makes no report of its own (the event says so with
EPOLLRDHUP, PEER_CLOSED here), so the server must read on to the EOF. Then run `make check`
(or `.venv/bin/python exercises/check.py 11`), which counts the recv calls. The finished
version is solutions/11_short_read.py, with the starting point's lines beside the answer.

    python3 exercises/11_short_read.py --step short-read --count    # 127.0.0.1:9021
    python3 lessons/echo_client.py --port 9021      # type a few lines, Ctrl-D, then Ctrl-C
                                                    # the server: it prints its calls
"""

import argparse
import ctypes
import errno
import os
import select
import signal
import socket
import sys
import time
from email.utils import formatdate

READABLE = select.EPOLLIN
WRITABLE = select.EPOLLOUT
# The kernel always reports these, asked or not: the next recv or send says what happened.
TROUBLE = select.EPOLLHUP | select.EPOLLERR
EDGE = select.EPOLLET
# Edge-triggered with the short-read rule: a FIN that arrives with the last data makes no
# report of its own, and the short read that takes the data does not see it. Ask for it.
PEER_CLOSED = select.EPOLLRDHUP

STEPS = ("naive", "send-now", "short-read", "batch-send", "recv-into", "prebuilt", "hot-loop")
RECV_SIZE = 64 * 1024  # bytes asked for by one recv
HIGH_WATER = 1 << 20  # unsent bytes at which we stop reading from that client
BACKLOG = 1024
OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
RETRY_ACCEPT = 1.0  # seconds: while accept is paused for want of fds, retry this often
STOP_GRACE = 1.0  # seconds the parent waits for its workers after SIGTERM
PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent dies

END_OF_HEAD = b"\r\n\r\n"
MAX_HEAD = 8 * 1024  # request line plus headers; more is answered with 431
HELLO = b"Hello, world!"
CACHE_SIZE = 1024  # --step prebuilt: distinct requests remembered (per second)
# RFC 9110 5.6.2: a method and a header name are "tokens" of these characters; deleting
# them with bytes.translate leaves nothing exactly when the name is valid.
TOKEN = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed",
           431: b"Request Header Fields Too Large", 501: b"Not Implemented",
           505: b"HTTP Version Not Supported"}


# -- counting system calls ----------------------------------------------------------------

CALLS = {"epoll_wait": 0, "epoll_ctl": 0, "accept": 0, "recv": 0, "send": 0}


def counted(name, call):
    """`call`, counted under `name` in CALLS (a call that raises was made all the same)."""
    def wrapper(*args):
        CALLS[name] += 1
        return call(*args)
    return wrapper


def calls_line():
    return "system calls: " + " ".join(f"{name}={n}" for name, n in CALLS.items())


# -- HTTP, the little of it this lesson speaks ----------------------------------------------

class HttpError(Exception):
    def __init__(self, status, detail):
        super().__init__(detail)
        self.status = status


def parse_head(head):
    """The head's (status, head_only, keep_alive) for GET or HEAD; HttpError otherwise."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[0] or parts[0].translate(None, TOKEN):
        raise HttpError(400, "the request line must be METHOD TARGET VERSION")
    method, target, version = parts
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise HttpError(505 if version.startswith(b"HTTP/") else 400, "HTTP/1.0 or 1.1 only")
    keep_alive = version == b"HTTP/1.1"
    hosts = 0
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name.translate(None, TOKEN):
            raise HttpError(400, "a header line is not NAME: VALUE")
        name, value = name.lower(), value.strip(b" \t").lower()
        if name == b"host":
            hosts += 1
        elif name == b"connection":
            options = [option.strip() for option in value.split(b",")]
            if b"close" in options:
                keep_alive = False
            elif b"keep-alive" in options:
                keep_alive = True
        elif name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            raise HttpError(501, "request bodies are not accepted here")
    if version == b"HTTP/1.1" and hosts != 1:
        raise HttpError(400, "an HTTP/1.1 request needs exactly one Host header")
    if method not in (b"GET", b"HEAD"):
        raise HttpError(405, "GET or HEAD only")
    status = 200 if target.partition(b"?")[0] == b"/" else 404
    return status, method == b"HEAD", keep_alive


def build_response(status, head_only, keep_alive, http10=False):
    body = HELLO if status == 200 else b"%d %s\n" % (status, REASONS[status])
    if not keep_alive:
        connection = b"Connection: close\r\n"
    else:
        connection = b"Connection: keep-alive\r\n" if http10 else b""
    date = formatdate(usegmt=True).encode()
    return b"".join((b"HTTP/1.1 %d %s\r\nServer: epoll-workbook\r\nDate: " % (
        status, REASONS[status]), date, b"\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
        % len(body), connection, b"\r\n", b"" if head_only else body))


def answer_head(request):
    """(response bytes, keep_alive) for one request (its head and the empty line after it):
    parsed, built, every time."""
    head = request[:-len(END_OF_HEAD)]
    try:
        status, head_only, keep_alive = parse_head(head)
    except HttpError as e:
        return build_response(e.status, False, False), False
    http10 = head.split(b"\r\n", 1)[0].endswith(b"HTTP/1.0")
    return build_response(status, head_only, keep_alive, http10), keep_alive


# -- one connection ---------------------------------------------------------------------

class Connection:
    """Everything the server knows about one client, and the bound methods it calls."""

    __slots__ = ("sock", "fd", "recv", "recv_into", "send", "inbox", "outbox", "peer_done",
                 "closing", "shut", "interest", "closed")  # fixed fields: faster to look up

    def __init__(self, sock, count=False):
        self.sock = sock
        self.fd = sock.fileno()
        self.recv, self.recv_into, self.send = sock.recv, sock.recv_into, sock.send
        if count:
            self.recv = counted("recv", sock.recv)
            self.recv_into = counted("recv", sock.recv_into)
            self.send = counted("send", sock.send)
        self.inbox = bytearray()  # HTTP: received bytes not yet answered
        self.outbox = bytearray()  # bytes the kernel has not taken yet
        self.peer_done = False  # the client sent EOF
        self.closing = False  # HTTP: the last answer is queued; what comes next is dropped
        self.shut = False  # HTTP: we half-closed after the last answer
        self.interest = READABLE
        self.closed = False

    def wanted(self):
        """The interest mask this state calls for: derived, never edited by hand."""
        mask = 0
        if not self.peer_done and len(self.outbox) < HIGH_WATER:  # else: it is not reading
            mask |= READABLE
        if self.outbox:  # EPOLLOUT exactly while something waits to be sent
            mask |= WRITABLE
        return mask


# -- the server ---------------------------------------------------------------------------

class Server:
    def __init__(self, listener, protocol="echo", step=STEPS[-1], trigger="level",
                 count=False):
        self.listener = listener
        self.protocol = protocol
        level = STEPS.index(step)
        self.send_now = level >= STEPS.index("send-now")
        self.short_read = level >= STEPS.index("short-read")
        self.batch = level >= STEPS.index("batch-send")
        self.read_into = level >= STEPS.index("recv-into")
        self.prebuilt = level >= STEPS.index("prebuilt")
        self.hot_loop = level >= STEPS.index("hot-loop")
        self.count = count
        self.edge = trigger == "edge"
        self.flags = (EDGE | PEER_CLOSED) if self.edge else 0  # added to every client's mask
        self.buffer = bytearray(RECV_SIZE)  # --step recv-into: every read lands here
        self.view = memoryview(self.buffer)
        self.cache = {}  # --step prebuilt: request bytes -> (response, keep_alive)
        self.cache_second = 0
        self.conns = {}  # fd -> Connection
        epoll = select.epoll()
        self.epoll = epoll
        self.poll, self.register = epoll.poll, epoll.register
        self.modify, self.unregister = epoll.modify, epoll.unregister
        self.accept = listener.accept
        if count:
            self.poll = counted("epoll_wait", epoll.poll)
            self.register = counted("epoll_ctl", epoll.register)
            self.modify = counted("epoll_ctl", epoll.modify)
            self.unregister = counted("epoll_ctl", epoll.unregister)
            self.accept = counted("accept", listener.accept)
        self.register(listener.fileno(), READABLE | (EDGE if self.edge else 0))
        self.listener_interest = READABLE
        self.accept_paused = False
        self.retry_accept_at = 0.0
        # The self-pipe: Python writes a caught signal's number into this socket, which
        # wakes epoll_wait like any client would (PEP 475 retries epoll_wait otherwise).
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        signal.set_wakeup_fd(self.wake_w.fileno(), warn_on_full_buffer=False)
        epoll.register(self.wake_r.fileno(), READABLE)  # not a client's call: not counted
        self.running = True

    # -- accepting ------------------------------------------------------------------------

    def on_accept(self):
        while True:  # until EAGAIN: right for both triggers (edge-triggered requires it)
            try:
                sock, _ = self.accept()
            except BlockingIOError:
                return
            except ConnectionAbortedError:  # gave up while queued: the next one
                continue
            except OSError as e:
                if e.errno in OUT_OF_RESOURCES:
                    self.pause_accept()
                return
            sock.setblocking(False)
            if self.protocol == "http":  # answers must not wait for the client's ACK
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Connection(sock, self.count)
            self.conns[conn.fd] = conn
            self.register(conn.fd, conn.interest | self.flags)

    def pause_accept(self):
        # Out of fds, the client stays queued: level-triggered, the listener is reported
        # again at once, forever (a spin); edge-triggered, never again (a stall). Stop
        # watching it; close() or RETRY_ACCEPT adds it back with EPOLL_CTL_MOD, which
        # re-checks readiness and reports the clients still queued.
        self.accept_paused = True
        self.retry_accept_at = time.monotonic() + RETRY_ACCEPT
        self.update_listener()

    def resume_accept(self):
        if self.accept_paused:
            self.accept_paused = False
            self.update_listener()

    def update_listener(self):
        wanted = 0 if self.accept_paused else READABLE
        if wanted != self.listener_interest:
            self.modify(self.listener.fileno(), wanted | (EDGE if self.edge else 0))
            self.listener_interest = wanted

    # -- reading --------------------------------------------------------------------------

    def on_readable(self, conn, ev=READABLE):
        while self.read_batch(conn, ev):  # stopped with HIGH_WATER unsent: send, read on
            self.flush(conn)
            if conn.closed or len(conn.outbox) >= HIGH_WATER:
                return  # the client is not reading: wanted() drops READABLE meanwhile
        if not conn.closed:
            self.flush(conn)

    def read_batch(self, conn, ev):
        """Drain: read until EAGAIN, or (--step short-read) a read that returns less than
        asked. True if it stopped early, with HIGH_WATER bytes waiting to be sent."""
        while not conn.peer_done:
            if len(conn.outbox) >= HIGH_WATER:
                return True
            try:
                if self.read_into:  # --- recv-into: no new bytes object per read
                    n = conn.recv_into(self.buffer)
                    data = self.view[:n]
                else:
                    data = conn.recv(RECV_SIZE)
                    n = len(data)
            except BlockingIOError:  # drained
                return False
            except OSError as e:  # ECONNRESET and friends: this client is gone
                self.close(conn, e.strerror)
                return False
            if not n:  # EOF: the client sends no more, but it may still read
                conn.peer_done = True
                return False
            if self.protocol == "echo":
                conn.outbox += data
            elif not conn.closing:  # after the last answer, what comes is dropped
                conn.inbox += data
                self.answer(conn)
            if self.send_now and not self.batch:  # --- before batch-send: a send per read
                self.send_outbox(conn)
            if conn.closed:
                return False
            # exercise: the starting point has the "#|" lines, not the answer below
            #| # TODO: the short-read rule, from --step short-read on (self.short_read): a recv
            #| # TODO: that returned fewer than RECV_SIZE bytes emptied the socket, so return
            #| # TODO: False now instead of making a recv that only raises BlockingIOError.
            #| # TODO: But not when ev has PEER_CLOSED: the client's EOF came with the data.
            # answer:
            # Fewer bytes than asked: the socket is empty for now; unless the peer's close
            # came with them (edge-triggered: no report will follow).
            if self.short_read and n < RECV_SIZE and not ev & PEER_CLOSED:
                return False
            # end of the answer
        return False

    def answer(self, conn):
        """HTTP: answer the complete request heads in the inbox, in order, until HIGH_WATER
        bytes wait to be sent. Returns how many were answered."""
        inbox = conn.inbox
        start = answered = 0
        while not conn.closing and len(conn.outbox) < HIGH_WATER:
            end = inbox.find(END_OF_HEAD, start)
            if end < 0 or end - start > MAX_HEAD:
                if end >= 0 or len(inbox) - start > MAX_HEAD:
                    conn.outbox += build_response(431, False, False)
                    conn.closing = True
                break
            request = bytes(inbox[start:end + len(END_OF_HEAD)])  # the head, its empty line
            start = end + len(END_OF_HEAD)
            response, keep_alive = self.respond(request)
            conn.outbox += response
            conn.closing = not keep_alive
            answered += 1
            if self.send_now and not self.batch:  # --- before batch-send: a send per answer
                if not self.send_outbox(conn) and conn.closed:
                    return answered
        del inbox[:len(inbox) if conn.closing else start]
        return answered

    def respond(self, request):
        if not self.prebuilt:
            return answer_head(request)
        # --- prebuilt: the same request gets the same bytes back, all through this second
        # (the Date header names the second). A dict lookup instead of a parse.
        second = int(time.time())
        if second != self.cache_second or len(self.cache) >= CACHE_SIZE:
            self.cache.clear()
            self.cache_second = second
        found = self.cache.get(request)
        if found is None:
            found = self.cache[request] = answer_head(request)
        return found

    # -- writing --------------------------------------------------------------------------

    def flush(self, conn):
        """After reading: send now, or (--step naive) leave it to the EPOLLOUT report."""
        if self.send_now:
            self.on_writable(conn)
        elif conn.peer_done and not conn.outbox:
            self.close(conn, "client finished")

    def send_outbox(self, conn):
        """Send until the outbox is empty (True) or the kernel takes no more (False)."""
        while conn.outbox:
            try:
                sent = conn.send(conn.outbox)
            except BlockingIOError:  # full: EPOLLOUT reports when there is room
                return False
            except OSError as e:  # EPIPE, ECONNRESET: the client stopped listening
                self.close(conn, e.strerror)
                return False
            del conn.outbox[:sent]
            if self.short_read and conn.outbox:  # took less than offered: the buffer is full
                return False
        return True

    def on_writable(self, conn):
        # Then the answers that waited while the client was not reading (HTTP).
        while self.send_outbox(conn) and conn.inbox and self.answer(conn):
            pass
        if not conn.closed and not conn.outbox and (conn.peer_done or conn.closing):
            self.finish(conn)

    def finish(self, conn):
        """Everything owed is sent. After EOF: close. After a last HTTP answer: half-close,
        so the answer is not lost to a reset, and read (dropping it) until the client's EOF."""
        if conn.peer_done:
            self.close(conn, "client finished")
        elif not conn.shut:
            conn.shut = True
            try:
                conn.sock.shutdown(socket.SHUT_WR)
            except OSError as e:
                self.close(conn, e.strerror)

    def close(self, conn, why):
        del self.conns[conn.fd]
        conn.closed = True
        self.unregister(conn.fd)  # before close: afterwards the number means nothing
        conn.sock.close()
        self.resume_accept()  # an fd is free again
        if self.count and self.running:  # the calls so far, each time a client leaves
            print(calls_line(), flush=True)  # (when stopping, once for all, on exit)

    def update_interest(self, conn):
        wanted = conn.wanted()
        if wanted != conn.interest:  # one epoll_ctl, only when something changed
            self.modify(conn.fd, wanted | self.flags)
            conn.interest = wanted

    # -- the loop -------------------------------------------------------------------------

    def dispatch(self, fd, ev):
        conn = self.conns.get(fd)
        if conn is None:  # closed by an earlier event of this batch
            return
        # Read first, then write: edge-triggered, an EPOLLOUT report is not repeated for a
        # socket that stays writable, so bytes read after the send of this report would wait
        # for a report that never comes (--step naive sends only when told).
        if ev & (READABLE | PEER_CLOSED | TROUBLE):
            self.on_readable(conn, ev)
        if ev & (WRITABLE | TROUBLE) and not conn.closed:
            self.on_writable(conn)
        if not conn.closed:
            self.update_interest(conn)

    def timeout(self):
        return max(0.0, self.retry_accept_at - time.monotonic()) if self.accept_paused else -1

    def serve(self):
        listen_fd, wake_fd = self.listener.fileno(), self.wake_r.fileno()
        while self.running:
            for fd, ev in self.poll(self.timeout()):
                if fd == listen_fd:
                    self.on_accept()
                elif fd == wake_fd:
                    self.running = False
                else:
                    self.dispatch(fd, ev)
            if self.accept_paused and time.monotonic() >= self.retry_accept_at:
                self.resume_accept()

    def serve_hot(self):
        """--step hot-loop: serve() with the common case inline. A readable connection with
        nothing owed reads one message, answers it with one send and goes back to the loop;
        everything else (a full read, EOF, errors, output left over) goes to dispatch()."""
        conns_get, poll, dispatch = self.conns.get, self.poll, self.dispatch
        update_interest, timeout = self.update_interest, self.timeout
        buffer, view, cache_get = self.buffer, self.view, self.cache.get
        listen_fd, wake_fd = self.listener.fileno(), self.wake_r.fileno()
        echo, plain = self.protocol == "echo", READABLE  # a report of data and nothing else
        while self.running:
            if not echo and int(time.time()) != self.cache_second:
                self.cache.clear()  # the Date of every cached answer is out of date
                self.cache_second = int(time.time())
            for fd, ev in poll(timeout() if self.accept_paused else -1):
                conn = conns_get(fd)
                if conn is None or ev != plain or conn.outbox or conn.inbox or conn.closing:
                    if fd == listen_fd:
                        self.on_accept()
                    elif fd == wake_fd:
                        self.running = False
                    else:
                        dispatch(fd, ev)
                    continue
                try:
                    if echo:  # the message lands in the one buffer, and leaves from it
                        n = conn.recv_into(buffer)
                    else:  # an HTTP head is looked up by its bytes: those are needed
                        data = conn.recv(RECV_SIZE)
                        n = len(data)
                except BlockingIOError:
                    continue
                except OSError as e:
                    self.close(conn, e.strerror)
                    continue
                if not 0 < n < RECV_SIZE:  # EOF, or more may wait: the general way
                    conn.peer_done = n == 0
                    if echo:
                        conn.outbox += view[:n]
                    elif n:
                        conn.inbox += data
                        self.answer(conn)
                    if not conn.closed:
                        dispatch(fd, READABLE)
                    continue
                if echo:
                    out = view[:n]
                else:  # one whole request seen before: its answer from memory
                    found = cache_get(data)
                    if found is None or not found[1]:  # anything else: the general way
                        conn.inbox += data
                        self.answer(conn)
                        self.flush(conn)
                        if not conn.closed:
                            update_interest(conn)
                        continue
                    out = found[0]
                try:
                    sent = conn.send(out)
                except BlockingIOError:
                    sent = 0
                except OSError as e:
                    self.close(conn, e.strerror)
                    continue
                if sent < len(out):  # the kernel took part: the rest waits for EPOLLOUT
                    conn.outbox += out[sent:]
                    update_interest(conn)
            if self.accept_paused and time.monotonic() >= self.retry_accept_at:
                self.resume_accept()

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
    parser = argparse.ArgumentParser(description="How fast can a Python epoll server go?")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=9021, help="0 takes any free port")
    parser.add_argument("--protocol", choices=["echo", "http"], default="echo",
                        help="echo every byte back, or answer GET / (default echo)")
    parser.add_argument("--step", choices=STEPS, default=STEPS[-1],
                        help="optimisations up to this one (default: all of them)")
    parser.add_argument("--trigger", choices=["level", "edge"], default="level",
                        help="level- or edge-triggered epoll, the same code (default level)")
    parser.add_argument("--processes", type=int, default=1, metavar="N",
                        help="N workers on one port with SO_REUSEPORT (default 1: no fork)")
    parser.add_argument("--count", action="store_true",
                        help="print the system calls of each kind made so far, each time "
                        "a client leaves and on exit")
    parser.add_argument("--profile", metavar="FILE",
                        help="on exit, write a cProfile of the loop to FILE (one process)")
    parser.error = lambda message: fail(f"{message} (see --help)")
    args = parser.parse_args()
    if not 0 <= args.port <= 65535:
        fail(f"--port must be between 0 and 65535, not {args.port}")
    if not 1 <= args.processes <= 64:
        fail(f"--processes must be between 1 and 64, not {args.processes}")
    if args.profile and args.processes > 1:
        fail("--profile profiles one process: use it without --processes")
    return args


def listen(host, port, reuse_port=False):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:  # one listening socket per worker, all on one port
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        listener.bind((host, port))
        listener.listen(BACKLOG)
    except OSError as e:
        listener.close()
        hint = " (is another server using it? try --port 0)" if e.errno == errno.EADDRINUSE else ""
        fail(f"cannot listen on {host}:{port}: {e.strerror}{hint}")
    listener.setblocking(False)
    return listener


def run(listener, args, announce=False):
    """One process: serve until SIGINT or SIGTERM."""
    server = Server(listener, args.protocol, args.step, args.trigger, args.count)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: None)  # the wake-up fd does the work
    if announce:  # ready: a signal from now on stops the loop cleanly
        host, port = listener.getsockname()[:2]
        print(f"listening on {host}:{port}", flush=True)
    loop = server.serve_hot if server.hot_loop else server.serve
    profile = None
    if args.profile:
        import cProfile
        profile = cProfile.Profile(time.process_time)  # CPU time: waiting is not work
        profile.enable()
    try:
        loop()
    finally:
        server.shutdown()
        if profile:
            profile.disable()
            profile.dump_stats(args.profile)
        if args.count:
            print(calls_line(), flush=True)


def supervise(args):
    """--processes N: N workers, each with its own listener on one port, and a parent that
    starts them, stops them all on SIGTERM or SIGINT, and stops them all if one dies."""
    first = listen(args.host, args.port, reuse_port=True)
    port = first.getsockname()[1]
    listeners = [first] + [listen(args.host, port, reuse_port=True)
                           for _ in range(args.processes - 1)]
    stop_signals = {signal.SIGINT, signal.SIGTERM, signal.SIGCHLD}
    # Blocked before fork, and taken with sigwait: no handler runs between two lines of ours.
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    parent, workers = os.getpid(), {}
    for number, listener in enumerate(listeners):
        pid = os.fork()
        if pid == 0:  # the worker
            code = 0
            try:
                # If the parent dies, even by SIGKILL, the kernel sends us SIGTERM.
                ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
                if os.getppid() != parent:  # it died before prctl: nobody will tell us
                    os._exit(0)
                for other in listeners:
                    if other is not listener:
                        other.close()
                signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)
                run(listener, args)
            except BaseException:
                code = 1
                import traceback
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                os._exit(code)  # never return into the parent's code
        workers[pid] = number
    for listener in listeners:
        listener.close()  # the workers have them; a copy here would queue clients nobody takes
    print(f"listening on {args.host}:{port}", flush=True)
    status = 0
    while workers:
        signum = signal.sigwait(stop_signals)
        if signum == signal.SIGCHLD:
            while workers:
                pid, code = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
                number = workers.pop(pid)
                print(f"worker {number} exited ({os.waitstatus_to_exitcode(code)}): "
                      "stopping the others", file=sys.stderr, flush=True)
                status = 1
        if signum != signal.SIGCHLD or status:
            break
    for pid in workers:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    while workers:  # bounded: SIGKILL whoever is still there at the deadline
        pid, _ = os.waitpid(-1, os.WNOHANG)
        if pid:
            workers.pop(pid, None)
            continue
        left = deadline - time.monotonic()
        if left <= 0:
            for pid in workers:
                os.kill(pid, signal.SIGKILL)
            deadline = float("inf")
        else:
            signal.sigtimedwait({signal.SIGCHLD}, min(left, 1.0))  # the next exit, or the time
    sys.exit(status)


def main():
    args = parse_args()
    if not hasattr(select, "epoll"):
        fail(f"epoll exists only on Linux, and this is {sys.platform}; "
             "use a Linux machine, VM, WSL2 or container")
    if args.processes > 1:
        supervise(args)
        return
    run(listen(args.host, args.port), args, announce=True)


if __name__ == "__main__":
    main()
