#!/usr/bin/env python3
"""Exercise 02: report what the server did when it stops.

This is lesson 02's edge-triggered echo server. Make it count, and when SIGINT or SIGTERM
stops it, print one last line on stdout, exactly like

    served 3 connections, echoed 6000 bytes

(the connections it accepted, and the bytes the kernel took from its send() calls). Change
the lines marked TODO in exercises/02_shutdown_report.py, then run `make check 02` (or
`.venv/bin/python exercises/check.py 02`). The finished version is
solutions/02_shutdown_report.py, with the starting point's lines beside each answer.

The exercise listens on a port of its own, 9012, so that it can run beside the lesson:

    python3 exercises/02_shutdown_report.py        # listening on 127.0.0.1:9012
    python3 lessons/echo_client.py --port 9012 --bytes 2000 --clients 3
    # then Ctrl-C the server: its last line is the report

The rest of lesson 02's description follows.

Run it, then talk to it from another terminal:

    python3 lessons/02_et_echo.py              # listening on 127.0.0.1:9002
    python3 lessons/echo_client.py --port 9002

Edge-triggered means: epoll_wait reports a socket when something *arrives* on it: a segment
of data, a client's completed handshake, send space freed after the buffer ran full, the
peer's close. Each arrival puts the socket on epoll's ready list unless it is there already,
so arrivals that come before the loop calls epoll_wait again make one report, and an arrival
after that makes a new one, even if old data still sits unread. Nothing is reported for what
is merely still there. The rule that follows: on every event, accept, recv and send until the
call would block (EAGAIN, which Python raises as BlockingIOError). Stop early and the leftover
waits, unreported, until something new arrives on that socket, which may be never. Lesson 03
shows each way to break this rule; this file is the correct version.

--short-read (off by default) takes a shortcut that epoll(7) allows for stream sockets, pipes
and FIFOs: a recv that returns fewer bytes than asked proves the buffer is empty, so the
server stops there instead of making one more recv that only raises EAGAIN. It saves one
system call per wake-up; it is not valid for a read of exactly the size asked, nor for
datagram sockets (one datagram per read), and a short read says nothing about a close that
arrived with the data, so the flag also asks for EPOLLRDHUP. The default stays "until
EAGAIN": one rule that is right for every kind of file descriptor and easy to check, where
the shortcut is an optimisation with conditions attached.

--trace prints one line per wake-up of the loop and per change of interest, so that a
notebook (or you) can count what the kernel reported, and on exit the number of recv calls.
See epoll(7) for the contract.
"""

import argparse
import errno
import select
import signal
import socket
import sys
import time

EDGE = select.EPOLLET  # report arrivals (data, clients, freed space, close), not levels
READABLE = select.EPOLLIN
WRITABLE = select.EPOLLOUT
# The kernel always reports these, asked or not. They are not a verdict: the next recv or
# send says what really happened (EOF, reset, ...), so treat them as "both directions ready".
TROUBLE = select.EPOLLHUP | select.EPOLLERR

RECV_SIZE = 64 * 1024  # bytes asked for by one recv(); the drain calls it until EAGAIN
# --short-read only: the peer's close (FIN) as a bit of its own. A FIN that arrives with the
# last data makes no second report, and the short read that takes the data does not see it.
PEER_CLOSED = select.EPOLLRDHUP
HIGH_WATER = 1 << 20  # unsent bytes at which we stop reading from that client...
LOW_WATER = 256 * 1024  # ...and the level at which we read from it again
BACKLOG = 1024  # connections the kernel may queue for us before accept()
# accept() errors that say "out of file descriptors" (ours: EMFILE, the system's: ENFILE) or
# "out of kernel memory": not this client's fault, and the next accept fails the same way.
OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
RETRY_ACCEPT = 1.0  # seconds: while accept is paused, try again this often anyway


def mask_name(mask):
    names = [name for bit, name in ((READABLE, "IN"), (WRITABLE, "OUT"),
                                    (select.EPOLLHUP, "HUP"), (select.EPOLLERR, "ERR"))
             if mask & bit]
    return "|".join(names) or "-"


class Connection:
    """Everything the server knows about one client, in one place."""

    def __init__(self, sock):
        self.sock = sock
        self.outbox = bytearray()  # echoed bytes the kernel has not taken yet
        self.peer_done = False  # the client sent EOF (close or shutdown(SHUT_WR))
        self.throttled = False  # outbox passed HIGH_WATER: stop reading until LOW_WATER
        self.interest = READABLE  # what epoll watches for now
        self.closed = False

    def update_throttle(self):
        """Hysteresis: pause reading above HIGH_WATER, resume only below LOW_WATER."""
        if len(self.outbox) >= HIGH_WATER:
            self.throttled = True
        elif len(self.outbox) <= LOW_WATER:
            self.throttled = False

    def wanted(self):
        """The interest mask this state calls for: derived, never edited by hand."""
        mask = 0
        if not self.peer_done and not self.throttled:
            mask |= READABLE
        if self.outbox:  # ask for EPOLLOUT only while there is something to write
            mask |= WRITABLE
        return mask


class EchoServer:
    """Like lesson 01's, but every handler drains: it loops until EAGAIN."""

    def __init__(self, listener, trace=False, recv_size=RECV_SIZE, short_read=False):
        self.listener = listener
        self.trace = trace
        self.recv_size = recv_size
        self.short_read = short_read
        self.client_flags = EDGE | (PEER_CLOSED if short_read else 0)
        self.recv_calls = self.recv_eagain = 0  # counted for the exit line of --trace
        self.conns = {}  # fd -> Connection
        self.epoll = select.epoll()
        self.epoll.register(listener.fileno(), READABLE | EDGE)
        self.listener_interest = READABLE
        self.accept_paused = False  # out of fds: the listener is not watched (pause_accept)
        self.retry_accept_at = 0.0  # when to try accept again if no connection closes first
        # The self-pipe: a signal handler cannot touch the loop, but Python writes the
        # signal number into this socket, which wakes epoll_wait like any client would.
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        signal.set_wakeup_fd(self.wake_w.fileno(), warn_on_full_buffer=False)
        self.epoll.register(self.wake_r.fileno(), READABLE | EDGE)
        self.running = True
        # TODO: two counters, for connections accepted and for bytes echoed.

    def log(self, text):
        if self.trace:
            print(text, flush=True)

    # -- the handlers -------------------------------------------------------------------

    def on_accept(self):
        # Edge-triggered: clients that arrived since the last epoll_wait make one report.
        # Accept until the queue is empty, or the ones still queued wait for yet another client.
        while True:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:  # queue drained: the next arrival is a new edge
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
            conn = Connection(sock)
            self.conns[sock.fileno()] = conn
            self.epoll.register(sock.fileno(), conn.interest | self.client_flags)
            self.log(f"accept fd {sock.fileno()}")
            # TODO: count the connection.

    def pause_accept(self, error):
        # The trap: accept failed for want of an fd or of memory, and the clients still
        # queued stay in the kernel's queue. Their arrival was reported already: when an fd
        # is freed later, nothing arrives on the listener, epoll reports nothing, and they
        # wait until yet another client comes (a stall). (Level-triggered, the listener would
        # be reported again at once, every pass: a spin.) So stop watching the listener, and
        # when close() frees an fd, add READABLE back with EPOLL_CTL_MOD, which re-checks
        # readiness on the spot and reports the clients still queued. RETRY_ACCEPT bounds
        # the pause (ENFILE and ENOMEM are freed by other processes, which tell us nothing).
        self.log(f"accept paused: {error.strerror}")
        self.accept_paused = True
        self.retry_accept_at = time.monotonic() + RETRY_ACCEPT
        self.update_listener()

    def resume_accept(self):
        if self.accept_paused:
            self.log("accept resumed")
            self.accept_paused = False
            self.update_listener()

    def on_readable(self, conn, ev=READABLE):
        # Drain: recv until EAGAIN. Whatever is left unread now is not reported again until
        # something new arrives from this client.
        while True:
            self.recv_calls += 1
            try:
                data = conn.sock.recv(self.recv_size)
            except BlockingIOError:  # drained; the next arrival is a new edge
                self.recv_eagain += 1
                break
            except OSError as e:  # ECONNRESET and friends: this client is gone
                self.close(conn, e.strerror)
                return
            if not data:  # EOF: the client will send no more, but it may still be reading
                conn.peer_done = True
                break
            conn.outbox += data
            self.on_writable(conn)  # try to send now; EPOLLOUT is only for what is left
            if conn.closed or conn.throttled:
                # Closed, or too much output pending: stop reading with data possibly left
                # behind. Nothing reports what is merely left, but wanted() drops EPOLLIN now,
                # and the epoll_ctl that adds it back later re-checks readiness and reports it.
                return
            # --- the --short-read deviation: fewer bytes than asked means the stream is
            # empty for now; skip the recv that would only raise EAGAIN. Unless the peer's
            # close came too (PEER_CLOSED): then read on, to the EOF no edge will announce.
            if self.short_read and len(data) < self.recv_size and not ev & PEER_CLOSED:
                break
        if conn.peer_done:
            self.on_writable(conn)  # nothing more to read: finish, or close if all is sent

    def on_writable(self, conn):
        # Drain the other way: send until the outbox is empty or the kernel says EAGAIN.
        # Stop early with the kernel still willing, and no EPOLLOUT edge will come.
        while conn.outbox:
            try:
                sent = conn.sock.send(conn.outbox)
            except BlockingIOError:  # buffer full: EPOLLOUT comes when space is freed
                break
            except OSError as e:  # EPIPE, ECONNRESET: the client stopped listening
                self.close(conn, e.strerror)
                return
            del conn.outbox[:sent]  # bytearray drops a prefix without copying the rest
            # TODO: count the bytes sent.
        conn.update_throttle()
        if conn.peer_done and not conn.outbox:  # everything owed is delivered
            self.close(conn, "client finished")

    def close(self, conn, why):
        fd = conn.sock.fileno()
        self.log(f"close fd {fd}: {why}")
        del self.conns[fd]
        conn.closed = True
        self.epoll.unregister(fd)  # before close: afterwards the fd number means nothing
        conn.sock.close()
        self.resume_accept()  # an fd is free again: a client still queued may have it

    def update_interest(self, conn):
        wanted = conn.wanted()
        if wanted != conn.interest:  # one epoll_ctl only when something changed
            self.log(f"interest fd {conn.sock.fileno()}: {mask_name(conn.interest)} -> "
                      f"{mask_name(wanted)}")
            self.epoll.modify(conn.sock.fileno(), wanted | self.client_flags)
            conn.interest = wanted

    def update_listener(self):
        # The listener's interest, derived from state like a connection's. Adding READABLE
        # back (EPOLL_CTL_MOD) re-checks readiness on the spot: clients queued meanwhile are
        # reported at once, although no new edge came for them.
        wanted = 0 if self.accept_paused else READABLE
        if wanted != self.listener_interest:
            self.epoll.modify(self.listener.fileno(), wanted | EDGE)
            self.listener_interest = wanted

    def poll_timeout(self):
        """How long epoll_wait may sleep: forever (-1), unless accept waits for a retry."""
        if not self.accept_paused:
            return -1
        return max(0.0, self.retry_accept_at - time.monotonic())

    # -- the loop -----------------------------------------------------------------------

    def serve(self):
        listen_fd, wake_fd = self.listener.fileno(), self.wake_r.fileno()
        while self.running:
            events = self.epoll.poll(self.poll_timeout())  # sleeps until something is ready
            self.log("wake " + " ".join(
                f"{'signal' if fd == wake_fd else fd}={mask_name(ev)}" for fd, ev in events))
            for fd, ev in events:
                if fd == listen_fd:
                    self.on_accept()
                elif fd == wake_fd:
                    self.running = False
                else:
                    self.dispatch(fd, ev)
            if self.accept_paused and time.monotonic() >= self.retry_accept_at:
                self.resume_accept()  # no connection closed meanwhile: try anyway

    def dispatch(self, fd, ev):
        conn = self.conns.get(fd)
        if conn is None:  # closed by an earlier event in this same batch
            return
        # Write first, then read: a send that lifts the throttle is followed at once by a
        # read of what waited meanwhile, and a read that ends throttled is the last word of
        # this pass, so update_interest drops EPOLLIN; adding it back later is an epoll_ctl
        # that re-checks readiness and reports what still waits. (Read first is safe too,
        # by subtler paths: that same re-check when the mask changes, and the EPOLLOUT report
        # after a send met EAGAIN, which also carries EPOLLIN while data waits.)
        if ev & (WRITABLE | TROUBLE):
            self.on_writable(conn)
        if ev & (READABLE | TROUBLE) and not conn.closed:
            self.on_readable(conn, ev)
        if not conn.closed:
            self.update_interest(conn)

    def shutdown(self):
        for conn in list(self.conns.values()):
            self.close(conn, "server stopping")
        signal.set_wakeup_fd(-1)
        self.epoll.close()
        self.listener.close()
        self.wake_r.close()
        self.wake_w.close()
        # TODO: print the report line (flush it: stdout may be a pipe).


# -- the program ------------------------------------------------------------------------

def fail(message):
    """A mistake of the user: one clear line, status 2, no traceback."""
    print(f"{sys.argv[0]}: error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_args():
    parser = argparse.ArgumentParser(description="Echo server on edge-triggered epoll.")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=9012, help="0 takes any free port")
    parser.add_argument("--trace", action="store_true",
                        help="print every wake-up of the loop and every interest change")
    parser.add_argument("--recv-size", type=int, default=RECV_SIZE, metavar="N",
                        help=f"bytes per recv() call (default {RECV_SIZE})")
    parser.add_argument("--short-read", action="store_true",
                        help="stop reading after a recv that returns less than asked "
                             "(default: read until EAGAIN)")
    parser.error = lambda message: fail(f"{message} (see --help)")
    args = parser.parse_args()
    if not 0 <= args.port <= 65535:
        fail(f"--port must be between 0 and 65535, not {args.port}")
    if args.recv_size < 1:
        fail("--recv-size must be at least 1")
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
    server = EchoServer(listener, trace=args.trace, recv_size=args.recv_size,
                        short_read=args.short_read)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: None)  # the wake-up fd does the work
    host, port = listener.getsockname()[:2]
    print(f"listening on {host}:{port}", flush=True)
    try:
        server.serve()
    finally:
        server.shutdown()
        server.log(f"recv calls: {server.recv_calls} ({server.recv_eagain} raised EAGAIN)")


if __name__ == "__main__":
    main()
