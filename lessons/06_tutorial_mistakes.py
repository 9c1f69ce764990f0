#!/usr/bin/env python3
"""Lesson 06: the classic epoll tutorials' mistakes, each one flag away from working code.

Most people meet epoll through a few well-known tutorials: an echo server, level- and
edge-triggered, and a tiny HTTP/1.0 "Hello, world!" responder. This file is a server in
their shape (one loop, one recv per event, a canned answer), written for this workbook.
Without a flag it works, and it passes every quick test. Each --mistake puts back one thing
the tutorials got wrong, as a few marked lines beside the right ones, and each comment names
the lesson that does it right. Notebook 06 runs every mistake with the client that exposes
it, and the same client against the lesson that fixes it.

    python lessons/06_tutorial_mistakes.py                         # echo, level-triggered
    python lessons/06_tutorial_mistakes.py --mode http             # HTTP/1.0 responder
    python lessons/06_tutorial_mistakes.py --mistake decode        # one mistake put back
    python lessons/06_tutorial_mistakes.py --list                  # every mistake, in a line

A mistake chooses the mode and trigger it lives in (recv-on-listener is an edge-triggered
echo server's, empty-recv-spin a level-triggered responder's). The mistakes are contained:
a crash ends only this process, the memory ones run under an address-space limit, and
SIGINT or SIGTERM stops even a server caught in an endless loop.
"""

import argparse
import errno
import resource
import select
import signal
import socket
import sys
import time

READABLE = select.EPOLLIN
WRITABLE = select.EPOLLOUT
EDGE = select.EPOLLET  # --trigger et: report arrivals, not levels
# Reported whether asked for or not; the next recv or send says what happened.
TROUBLE = select.EPOLLHUP | select.EPOLLERR

RECV_SIZE = 64 * 1024  # bytes asked for by one recv()
HIGH_WATER = 1 << 20  # unsent bytes at which we stop reading from that client...
LOW_WATER = 256 * 1024  # ...and the level at which we read from it again
BACKLOG = 1024
OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
RETRY_ACCEPT = 1.0  # seconds: while accept is paused, try again this often anyway
# The tutorials' canned answer: 13 bytes of body, and the connection closes after it.
HELLO = (b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\n"
         b"Hello, world!")
END_OF_HEAD = b"\r\n\r\n"
MAX_HEAD = 64 * 1024  # a request head longer than this closes the connection
# --mistake unbounded-buffer and leak-state: the process may map at most this much memory,
# so the demonstration fails with MemoryError before it can hurt the machine.
MEMORY_CAP = 1 << 30

# name: (the mode and trigger it lives in, None for either; what goes wrong; the fix)
MISTAKES = {
    "recv-on-listener": ("echo", "et", "after draining accept, recv on the listener: ENOTCONN "
                         "kills the server", "lesson 02, EchoServer.serve"),
    "decode": ("echo", None, "prints each chunk with .decode(): one byte that is not UTF-8 "
               "kills the server", "lessons 01-05, where bytes stay bytes"),
    "use-after-close": ("echo", None, "goes on to the write branch for a connection the read "
                        "branch just closed: KeyError", "lesson 02, EchoServer.dispatch"),
    "uncaught-reset": ("echo", None, "ECONNRESET and EPIPE are not caught: one rude client "
                       "stops the server", "lesson 02, on_readable and on_writable"),
    "close-on-eof": ("echo", None, "closes at EOF, throwing away the echo still owed",
                     "lesson 02, on_readable (peer_done) and on_writable"),
    "unbounded-buffer": ("echo", None, "reads on while a client never reads: memory grows "
                         "without bound", "lesson 02, Connection.update_throttle"),
    "partial-send": ("echo", None, "ignores what send() returns: the rest is lost",
                     "lesson 02, on_writable (del conn.outbox[:sent])"),
    "leak-state": ("echo", None, "never removes a closed connection's state: memory kept",
                   "lesson 02, EchoServer.close"),
    "bind-all": (None, None, "listens on 0.0.0.0 and a port in use is a traceback",
                 "every lesson's --host default and listen()"),
    "empty-recv-spin": ("http", "lt", "no branch for recv() == b'': EOF stays readable, "
                        "the loop spins", "lesson 04, HttpServer.on_readable"),
    "read-until-exception": ("http", "et", "reads until an exception; at EOF recv returns b'' "
                             "forever", "lesson 04, HttpServer.on_readable"),
}


class Stop(Exception):
    """SIGINT or SIGTERM arrived (raised by the signal handler, see main)."""


class Connection:
    """Everything the server knows about one client, in one place."""

    def __init__(self, sock):
        self.sock = sock
        self.inbox = bytearray()  # --mode http: the request head read so far
        self.outbox = bytearray()  # bytes owed to the client that the kernel has not taken
        self.peer_done = False  # the client sent EOF
        self.answered = False  # --mode http: the answer is queued; nothing more is read
        self.throttled = False  # outbox passed HIGH_WATER: stop reading until LOW_WATER
        self.interest = READABLE
        self.closed = False

    def wanted(self):
        """The interest mask this state calls for."""
        mask = 0
        if not (self.peer_done or self.answered or self.throttled):
            mask |= READABLE
        if self.outbox:
            mask |= WRITABLE
        return mask


class Server:
    def __init__(self, listener, mode="echo", trigger="lt", mistake=None):
        self.listener = listener
        self.mode = mode
        self.edge = EDGE if trigger == "et" else 0
        self.mistake = mistake
        self.conns = {}  # fd -> Connection
        self.epoll = select.epoll()
        self.epoll.register(listener.fileno(), READABLE | self.edge)
        self.accept_paused = False
        self.retry_accept_at = 0.0

    # -- the handlers -------------------------------------------------------------------

    def on_accept(self):
        # One accept per event level-triggered (the listener is reported again while
        # clients wait); edge-triggered, until the queue is empty.
        while True:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            except ConnectionAbortedError:
                continue
            except OSError as e:
                if e.errno in OUT_OF_RESOURCES:  # lesson 01's pause_accept says why
                    self.accept_paused = True
                    self.retry_accept_at = time.monotonic() + RETRY_ACCEPT
                    self.epoll.modify(self.listener.fileno(), self.edge)
                return
            sock.setblocking(False)
            conn = Connection(sock)
            self.conns[sock.fileno()] = conn
            self.epoll.register(sock.fileno(), conn.interest | self.edge)
            if not self.edge:
                return

    def resume_accept(self):
        if self.accept_paused:  # EPOLL_CTL_MOD re-checks: clients still queued are reported
            self.accept_paused = False
            self.epoll.modify(self.listener.fileno(), READABLE | self.edge)

    def on_readable(self, conn):
        # Level-triggered: one recv per event. Edge-triggered: until EAGAIN.
        while not conn.closed:
            try:
                data = conn.sock.recv(RECV_SIZE)
            except BlockingIOError:
                return
            except OSError as e:
                # --- mistake uncaught-reset: the tutorials caught nothing here, so one
                # client's reset (ECONNRESET) ended the server for everybody. Done right:
                # lesson 02, EchoServer.on_readable.
                if self.mistake == "uncaught-reset":
                    raise
                self.close(conn, e.strerror)
                return
            if not data:
                self.on_eof(conn)
                # --- mistake read-until-exception: the tutorials' edge-triggered responder
                # looped `request += recv()` until an exception; at EOF recv returns b""
                # every time and raises nothing, so the loop never ends and the server
                # answers nobody. Done right: lesson 04, HttpServer.on_readable.
                if self.mistake == "read-until-exception":
                    continue
                return
            # --- mistake decode: the tutorials printed every chunk as text; the first
            # byte that is not UTF-8 raises UnicodeDecodeError and ends the server. Done
            # right: lessons 01-05 handle bytes as bytes and never decode what they echo.
            if self.mistake == "decode":
                print("received:", data.decode().rstrip(), flush=True)
            if self.mode == "http":
                self.on_request_bytes(conn, data)
            else:
                conn.outbox += data
                self.on_writable(conn)
            if conn.throttled or conn.answered or not self.edge:
                return

    def on_eof(self, conn):
        # --- mistake empty-recv-spin: the tutorials' level-triggered responder had no branch
        # for an empty recv. EOF is a level: the fd is reported readable on every pass,
        # for ever, and the loop spins at full CPU. Done right: lesson 04, on_readable.
        if self.mistake in ("empty-recv-spin", "read-until-exception"):
            return
        # --- mistake close-on-eof: the tutorials closed at once, throwing away what they
        # still owed; a client that half-closes and then reads loses its echo. Done right:
        # lesson 02, on_readable sets peer_done and on_writable closes once all is sent.
        if self.mistake == "close-on-eof":
            self.close(conn, "client finished")
            return
        conn.peer_done = True
        self.on_writable(conn)

    def on_request_bytes(self, conn, data):
        conn.inbox += data
        if END_OF_HEAD in conn.inbox:  # the whole head: answer, then close (HTTP/1.0)
            conn.answered = True
            conn.outbox += HELLO
            self.on_writable(conn)
        elif len(conn.inbox) > MAX_HEAD:
            self.close(conn, "request head too long")

    def on_writable(self, conn):
        while conn.outbox and not conn.closed:
            try:
                sent = conn.sock.send(conn.outbox)
            except BlockingIOError:  # buffer full: EPOLLOUT reports once there is room
                break
            except OSError as e:
                if self.mistake == "uncaught-reset":  # (see on_readable): EPIPE, ECONNRESET
                    raise
                self.close(conn, e.strerror)
                return
            # --- mistake partial-send: the tutorials ignored what send() returned and
            # dropped the whole message; what the kernel did not take is lost. Done right:
            # lesson 02, on_writable keeps the unsent rest (del conn.outbox[:sent]).
            if self.mistake == "partial-send":
                sent = len(conn.outbox)
            del conn.outbox[:sent]  # bytearray drops a prefix without copying the rest
        # --- mistake unbounded-buffer: the tutorials read on whatever was owed, so a
        # client that never reads makes the server buffer everything it sends. Done
        # right: lesson 02, Connection.update_throttle (stop reading above HIGH_WATER).
        if len(conn.outbox) >= HIGH_WATER and self.mistake != "unbounded-buffer":
            conn.throttled = True
        elif len(conn.outbox) <= LOW_WATER:
            conn.throttled = False
        if not conn.outbox and (conn.peer_done or conn.answered) and not conn.closed:
            self.close(conn, "all sent")

    def close(self, conn, why):
        fd = conn.sock.fileno()
        conn.closed = True
        self.epoll.unregister(fd)  # before close: afterwards the fd number means nothing
        conn.sock.close()
        # --- mistake leak-state: the tutorials kept per-connection dictionaries and forgot
        # to delete from them on close; what a gone client held stays. Done right: lesson
        # 02, EchoServer.close.
        if self.mistake != "leak-state":
            del self.conns[fd]
        self.resume_accept()

    def update_interest(self, conn):
        wanted = conn.wanted()
        if wanted != conn.interest:
            self.epoll.modify(conn.sock.fileno(), wanted | self.edge)
            conn.interest = wanted

    # -- the loop -----------------------------------------------------------------------

    def serve(self):
        listen_fd = self.listener.fileno()
        while True:
            timeout = -1
            if self.accept_paused:
                timeout = max(0.0, self.retry_accept_at - time.monotonic())
            for fd, ev in self.epoll.poll(timeout):
                if fd == listen_fd:
                    self.on_accept()
                    # --- mistake recv-on-listener: two edge-triggered tutorials, having
                    # drained the accept queue, fell through into their read loop with
                    # the listening socket. Done right: lesson 02, EchoServer.serve.
                    if self.mistake == "recv-on-listener":
                        self.listener.recv(RECV_SIZE)  # ENOTCONN: a listener has no data
                    continue
                self.dispatch(fd, ev)
            if self.accept_paused and time.monotonic() >= self.retry_accept_at:
                self.resume_accept()

    def dispatch(self, fd, ev):
        conn = self.conns.get(fd)
        if conn is None:
            return
        if ev & (READABLE | TROUBLE):
            self.on_readable(conn)
        # --- mistake use-after-close: the tutorials went on to the write branch for the fd
        # the read branch had just closed, and looked its state up again: KeyError. Done
        # right: lesson 02, EchoServer.dispatch stops once the connection is closed.
        if conn.closed and self.mistake != "use-after-close":
            return
        conn = self.conns[fd]  # each tutorial branch looked the state up again by fd
        if ev & WRITABLE:
            self.on_writable(conn)
        if not conn.closed:
            self.update_interest(conn)

    def shutdown(self):
        for conn in list(self.conns.values()):
            if not conn.closed:
                self.close(conn, "server stopping")
        self.epoll.close()
        self.listener.close()


# -- the program ------------------------------------------------------------------------

def fail(message):
    """A mistake of the user: one clear line, status 2, no traceback."""
    print(f"{sys.argv[0]}: error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_args():
    parser = argparse.ArgumentParser(
        description="A tutorial-shaped epoll server; --mistake puts back one tutorial bug.")
    parser.add_argument("--host", default=None,
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=9006, help="0 takes any free port")
    parser.add_argument("--mode", choices=["echo", "http"], default=None,
                        help="echo server (default) or HTTP/1.0 responder")
    parser.add_argument("--trigger", choices=["lt", "et"], default=None,
                        help="level-triggered (default) or edge-triggered")
    parser.add_argument("--mistake", choices=sorted(MISTAKES), default=None,
                        help="put back one tutorial mistake (--list says what each does)")
    parser.add_argument("--list", action="store_true", help="list the mistakes and exit")
    parser.error = lambda message: fail(f"{message} (see --help)")
    args = parser.parse_args()
    if not 0 <= args.port <= 65535:
        fail(f"--port must be between 0 and 65535, not {args.port}")
    mode, trigger = MISTAKES[args.mistake][:2] if args.mistake else (None, None)
    for name, given, needed in (("mode", args.mode, mode), ("trigger", args.trigger, trigger)):
        if given and needed and given != needed:
            fail(f"--mistake {args.mistake} lives in --{name} {needed}, not {given}")
    args.mode = args.mode or mode or "echo"
    args.trigger = args.trigger or trigger or "lt"
    return args


def listen(host, port, mistake):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
        listener.listen(BACKLOG)
    except OSError as e:
        # --- mistake bind-all (second half): the tutorials let this error through, a
        # traceback instead of a line saying what to do. Done right: every lesson's listen().
        if mistake == "bind-all":
            raise
        listener.close()
        busy = e.errno == errno.EADDRINUSE
        hint = " (is another server using it? try --port 0)" if busy else ""
        fail(f"cannot listen on {host}:{port}: {e.strerror}{hint}")
    listener.setblocking(False)
    return listener


def stop(signum, frame):
    # Raised, not just noted: a mistake may trap the loop in a handler that never returns
    # to epoll_wait (read-until-exception), and the exception ends it wherever it is.
    raise Stop


def main():
    args = parse_args()
    if args.list:
        for name, (_, _, what, fix) in MISTAKES.items():
            print(f"{name}: {what}; done right in {fix}")
        return
    if not hasattr(select, "epoll"):
        fail(f"epoll exists only on Linux, and this is {sys.platform}; "
             "use a Linux machine, VM, WSL2 or container")
    # --- mistake bind-all: the tutorials listened on 0.0.0.0, every address of the
    # machine, reachable from the whole network. Done right: --host defaults to 127.0.0.1.
    host = args.host or ("0.0.0.0" if args.mistake == "bind-all" else "127.0.0.1")
    if args.mistake in ("unbounded-buffer", "leak-state"):  # contain the demonstration
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        cap = MEMORY_CAP if hard == resource.RLIM_INFINITY else min(MEMORY_CAP, hard)
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    listener = listen(host, args.port, args.mistake)
    server = Server(listener, mode=args.mode, trigger=args.trigger, mistake=args.mistake)
    try:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, stop)
        bound_host, port = listener.getsockname()[:2]
        print(f"listening on {bound_host}:{port}", flush=True)
        server.serve()
    except Stop:
        pass
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)  # a second signal must not cut the clean-up
        server.shutdown()


if __name__ == "__main__":
    main()
