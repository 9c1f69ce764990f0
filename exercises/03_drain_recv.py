#!/usr/bin/env python3
"""Exercise 03: make the edge-triggered read handler drain.

This is lesson 03's edge-triggered echo server, cut down to the correct parts, except for
one handler: on_readable() makes a single recv() per edge, like `--skip-drain recv`. A client
that sends more than RECV_SIZE bytes in one go gets the first RECV_SIZE back and then waits
forever: the rest sits in the socket, and edge-triggered epoll reports nothing more until
something new arrives from that client, which sent everything already.

Change the lines marked TODO in exercises/03_drain_recv.py so that on_readable() drains:
recv until BlockingIOError. Mind the end of the stream: at EOF recv() returns b"" every time
you call it, it does not raise, so a loop that waits for an exception spins forever. Then
run `make check` (or `.venv/bin/python exercises/check.py 03`). The finished version is
solutions/03_drain_recv.py, with the starting point's lines beside the answer.

    python3 exercises/03_drain_recv.py               # listening on 127.0.0.1:9013
    python3 lessons/echo_client.py --port 9013 --bytes 10000
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

RECV_SIZE = 1024  # bytes asked for by one recv(): small, so that one call is rarely enough
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
        self.fd = sock.fileno()
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
    def __init__(self, listener, trace=False):
        self.listener = listener
        self.trace = trace
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
            self.conns[conn.fd] = conn
            self.epoll.register(conn.fd, conn.interest | EDGE)
            self.log(f"accept fd {conn.fd}")

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

    def on_readable(self, conn):
        # TODO: one recv per edge, as in `--skip-drain recv`: under EPOLLET the rest of a
        # TODO: large message stays unread, unreported until more arrives. Loop until recv()
        # TODO: raises BlockingIOError; leave the loop at EOF (b"") too, and stop reading
        # TODO: when on_writable() closed the connection or throttled it.
        try:
            data = conn.sock.recv(RECV_SIZE)
        except BlockingIOError:  # TODO: nothing to read: drained
            return  # TODO
        except OSError as e:  # ECONNRESET and friends: this client is gone
            self.close(conn, e.strerror)
            return
        if not data:  # TODO: EOF: the client will send no more, but it may still be reading
            conn.peer_done = True
            self.on_writable(conn)  # TODO: finish, or close if all is sent
            return  # TODO
        conn.outbox += data
        self.on_writable(conn)  # try to send now; EPOLLOUT is only for what is left

    def on_writable(self, conn):
        # Drain the other way: send until the outbox is empty or the kernel says EAGAIN.
        while conn.outbox:
            try:
                sent = conn.sock.send(conn.outbox)
            except BlockingIOError:  # buffer full: EPOLLOUT comes when space is freed
                break
            except OSError as e:  # EPIPE, ECONNRESET: the client stopped listening
                self.close(conn, e.strerror)
                return
            del conn.outbox[:sent]  # bytearray drops a prefix without copying the rest
        conn.update_throttle()
        if conn.peer_done and not conn.outbox:  # everything owed is delivered
            self.close(conn, "client finished")

    def close(self, conn, why):
        self.log(f"close fd {conn.fd}: {why}")
        del self.conns[conn.fd]
        conn.closed = True
        self.epoll.unregister(conn.fd)  # before close: afterwards the fd number means nothing
        conn.sock.close()
        self.resume_accept()  # an fd is free again: a client still queued may have it

    def update_interest(self, conn):
        wanted = conn.wanted()
        if wanted != conn.interest:  # one epoll_ctl only when something changed
            self.log(f"interest fd {conn.fd}: {mask_name(conn.interest)} -> {mask_name(wanted)}")
            self.epoll.modify(conn.fd, wanted | EDGE)
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
        # Write first, then read, as lesson 02 does: a read that ends throttled is then the
        # last word of this pass, and update_interest drops EPOLLIN for it.
        if ev & (WRITABLE | TROUBLE):
            self.on_writable(conn)
        if ev & (READABLE | TROUBLE) and not conn.closed:
            self.on_readable(conn)
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


# -- the program ------------------------------------------------------------------------

def fail(message):
    """A mistake of the user: one clear line, status 2, no traceback."""
    print(f"{sys.argv[0]}: error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_args():
    parser = argparse.ArgumentParser(description="Edge-triggered echo server (exercise 03).")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=9013, help="0 takes any free port")
    parser.add_argument("--trace", action="store_true",
                        help="print every wake-up, accept, interest change and close")
    parser.error = lambda message: fail(f"{message} (see --help)")
    args = parser.parse_args()
    if not 0 <= args.port <= 65535:
        fail(f"--port must be between 0 and 65535, not {args.port}")
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
    server = EchoServer(listener, trace=args.trace)
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
