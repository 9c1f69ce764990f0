#!/usr/bin/env python3
"""Lesson 03: the edge-triggered drain, and the ways to get it wrong.

Lesson 02's rule: on every edge, accept, recv and send until the call would block (EAGAIN,
BlockingIOError in Python). This server is lesson 02's, with each way of breaking that rule
available as a flag, so that you can watch what breaks. The default is the correct server.

    python3 lessons/03_et_drain_pitfalls.py                     # drains: correct
    python3 lessons/03_et_drain_pitfalls.py --skip-drain recv   # one small recv per edge
    python3 lessons/03_et_drain_pitfalls.py --skip-drain accept # one accept per edge
    python3 lessons/03_et_drain_pitfalls.py --skip-drain send   # one small send per edge
    python3 lessons/03_et_drain_pitfalls.py --level --skip-drain recv   # LT forgives it

Then, from another terminal, the client that shows each pitfall (each one stalls and times
out against its broken server, and finishes at once against the correct one):

    python3 lessons/echo_client.py --port 9003 --bytes 10000 --timeout 5              # recv
    python3 lessons/echo_client.py --port 9003 --bytes 200000 --timeout 5             # send
    python3 lessons/echo_client.py --port 9003 --bytes 64 --clients 5 --timeout 10    # accept

The accept pitfall needs its clients to arrive together: stop the server first (Ctrl-Z in
its terminal), run the client, and when it says "connected 5 clients", resume the server
(fg). Arrivals that come while the listener is already on the ready list make one report;
with the server running, each client may be its own edge and all five may be served.

The opposite mistake is to drain one busy connection so greedily that nobody else is served
until its sender pauses. epoll(7), "Possible pitfalls and ways to avoid them", suggests the
fix: take a bounded amount from each ready connection per turn, and remember in your own
ready list which ones still have data, serving them round-robin. That is --budget:

    python3 lessons/03_et_drain_pitfalls.py --work 20                 # greedy drain
    python3 lessons/03_et_drain_pitfalls.py --work 20 --budget 16384  # fair turns

--work N makes every KiB read cost N microseconds of CPU, as parsing or compressing the
data would; without it a Python echo server moves bytes about as fast as loopback delivers
them, and the starvation is too short to see by eye. --trace prints the loop's decisions.
"""

import argparse
import errno
import collections
import select
import signal
import socket
import sys
import time

EDGE = select.EPOLLET  # report each arrival once; nothing for what is merely still there
READABLE = select.EPOLLIN
WRITABLE = select.EPOLLOUT
# The kernel always reports these, asked or not. They are not a verdict: the next recv or
# send says what really happened (EOF, reset, ...), so treat them as "both directions ready".
TROUBLE = select.EPOLLHUP | select.EPOLLERR

RECV_SIZE = 64 * 1024  # bytes asked for by one recv() in the correct drain
HIGH_WATER = 1 << 20  # unsent bytes at which we stop reading from that client...
LOW_WATER = 256 * 1024  # ...and the level at which we read from it again
BACKLOG = 1024  # connections the kernel may queue for us before accept()
# accept() errors that say "out of file descriptors" (ours: EMFILE, the system's: ENFILE) or
# "out of kernel memory": not this client's fault, and the next accept fails the same way.
OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
RETRY_ACCEPT = 1.0  # seconds: while accept is paused, try again this often anyway

# The pitfalls. Each one is a single early exit from a drain loop, marked PITFALL below.
PITFALLS = ("accept", "recv", "send")
SKIP_RECV_CHUNK = 1024  # --skip-drain recv: one recv of this many bytes per EPOLLIN edge
SKIP_SEND_CHUNK = 4096  # --skip-drain send: one send of this many bytes per EPOLLOUT edge


def mask_name(mask):
    names = [name for bit, name in ((READABLE, "IN"), (WRITABLE, "OUT"),
                                    (select.EPOLLHUP, "HUP"), (select.EPOLLERR, "ERR"))
             if mask & bit]
    return "|".join(names) or "-"


def pretend_to_work(nbytes, micros_per_kib):
    """Spend CPU on the bytes just read, as a real server would (--work)."""
    if micros_per_kib:
        end = time.perf_counter() + nbytes / 1024 * micros_per_kib / 1e6
        while time.perf_counter() < end:
            pass


class Connection:
    """Everything the server knows about one client, in one place."""

    def __init__(self, sock):
        self.sock = sock
        self.fd = sock.fileno()
        self.outbox = bytearray()  # echoed bytes the kernel has not taken yet
        self.peer_done = False  # the client sent EOF (close or shutdown(SHUT_WR))
        self.throttled = False  # outbox passed HIGH_WATER: stop reading until LOW_WATER
        self.queued = False  # on our own ready list: readable, waiting for its next turn
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
    """Lesson 02's edge-triggered echo server, with its drains breakable on purpose."""

    def __init__(self, listener, skip=None, level=False, budget=0, work=0,
                 trace=False, recv_size=RECV_SIZE):
        self.listener = listener
        self.skip = skip  # None, or which drain to break: "accept", "recv" or "send"
        self.edge = 0 if level else EDGE  # --level: register without EPOLLET, as lesson 01
        self.budget = budget  # bytes one connection may read per turn; 0 means no limit
        self.work = work  # microseconds of CPU per KiB read
        self.trace = trace
        self.recv_size = recv_size
        self.conns = {}  # fd -> Connection
        # Our own ready list (epoll(7)'s suggestion): connections that still had data when
        # their turn ended. No new edge will come for that data, so we must remember it.
        self.ready = collections.deque()
        self.epoll = select.epoll()
        self.epoll.register(listener.fileno(), READABLE | self.edge)
        self.listener_interest = READABLE
        self.accept_paused = False  # out of fds: the listener is not watched (pause_accept)
        self.retry_accept_at = 0.0  # when to try accept again if no connection closes first
        # The self-pipe: a signal handler cannot touch the loop, but Python writes the
        # signal number into this socket, which wakes epoll_wait like any client would.
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        signal.set_wakeup_fd(self.wake_w.fileno(), warn_on_full_buffer=False)
        self.epoll.register(self.wake_r.fileno(), READABLE | self.edge)
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
            # EPOLL_CTL_ADD checks readiness at once: bytes the client sent before we
            # accepted it are reported now, even though their edge came before we watched.
            self.epoll.register(conn.fd, conn.interest | self.edge)
            self.log(f"accept fd {conn.fd}")
            if self.skip == "accept":
                # PITFALL (--skip-drain accept): one accept per edge. The clients still in
                # the queue made their edge already; nobody tells us about them again.
                return

    def pause_accept(self, error):
        # Out of fds or memory: the clients still queued stay in the kernel's queue, and
        # their arrival was reported already. When an fd is freed later nothing arrives on
        # the listener, so they would wait for yet another client (a stall; level-triggered,
        # the listener would be reported again at once, every pass: a spin). So stop
        # watching the listener, and when close() frees an fd, add READABLE back with
        # EPOLL_CTL_MOD, which re-checks readiness on the spot and reports the clients still
        # queued. RETRY_ACCEPT bounds the pause (ENFILE and ENOMEM are freed by other
        # processes). Unlike --skip-drain accept, this leaves clients queued only while
        # accept cannot take them.
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
        # Drain: recv until EAGAIN. What is left unread now is not reported again until
        # something new arrives on this socket.
        # With --budget, stop after that many bytes and put the connection on our ready list.
        size = SKIP_RECV_CHUNK if self.skip == "recv" else self.recv_size
        taken, why = 0, "EAGAIN"
        while True:
            if self.budget and taken >= self.budget:
                why = "budget spent"
                self.enqueue(conn)  # still readable, and no edge will say so: remember it
                break
            want = min(size, self.budget - taken) if self.budget else size
            try:
                data = conn.sock.recv(want)
            except BlockingIOError:  # drained; the next arrival is a new edge
                break
            except OSError as e:  # ECONNRESET and friends: this client is gone
                self.close(conn, e.strerror)
                return
            if not data:  # EOF: the client will send no more, but it may still be reading
                conn.peer_done, why = True, "EOF"
                break
            taken += len(data)
            pretend_to_work(len(data), self.work)
            conn.outbox += data
            self.on_writable(conn)  # try to send now; EPOLLOUT is only for what is left
            if conn.closed:
                return
            if conn.throttled:
                # Too much output pending: stop reading with data possibly left behind.
                # No edge will announce it; on_writable() queues us when the throttle lifts.
                why = "throttled"
                break
            if self.skip == "recv":
                # PITFALL (--skip-drain recv): one recv per edge. The rest of the bytes sit
                # in the socket buffer, readable, but their edge has been spent.
                why = "one recv only"
                break
        self.log(f"read fd {conn.fd}: {taken} bytes, stopped by {why}")
        if conn.peer_done:
            self.on_writable(conn)  # nothing more to read: finish, or close if all is sent

    def on_writable(self, conn):
        # Drain the other way: send until the outbox is empty or the kernel says EAGAIN.
        # EPOLLOUT's edge is the send buffer going from full to not full: stop early while
        # the kernel would still take more, and that buffer never fills, so no edge comes.
        while conn.outbox:
            try:
                if self.skip == "send":
                    sent = conn.sock.send(conn.outbox[:SKIP_SEND_CHUNK])
                else:
                    sent = conn.sock.send(conn.outbox)
            except BlockingIOError:  # buffer full: EPOLLOUT comes once space is freed
                break
            except OSError as e:  # EPIPE, ECONNRESET: the client stopped listening
                self.close(conn, e.strerror)
                return
            del conn.outbox[:sent]  # bytearray drops a prefix without copying the rest
            if self.skip == "send":
                # PITFALL (--skip-drain send): one send per call, though the kernel would
                # have taken more. The rest waits for an edge that only a full buffer makes.
                break
        was_throttled = conn.throttled
        conn.update_throttle()
        if was_throttled and not conn.throttled:
            # Reading stopped with bytes perhaps still waiting. The epoll_ctl that restores
            # EPOLLIN re-checks readiness, but only if the mask really changes; our own
            # ready list gives the connection its next turn either way.
            self.enqueue(conn)
        if conn.peer_done and not conn.outbox:  # everything owed is delivered
            self.close(conn, "client finished")

    def close(self, conn, why):
        self.log(f"close fd {conn.fd}: {why}")
        del self.conns[conn.fd]
        conn.closed = True
        self.epoll.unregister(conn.fd)  # before close: afterwards the fd number means nothing
        conn.sock.close()  # a copy left on self.ready is skipped: see serve_ready_list()
        self.resume_accept()  # an fd is free again: a client still queued may have it

    def update_interest(self, conn):
        wanted = conn.wanted()
        if wanted != conn.interest:  # one epoll_ctl only when something changed
            self.log(f"interest fd {conn.fd}: {mask_name(conn.interest)} -> "
                     f"{mask_name(wanted)}")
            self.epoll.modify(conn.fd, wanted | self.edge)
            conn.interest = wanted

    def enqueue(self, conn):
        if not conn.queued:
            conn.queued = True
            self.ready.append(conn)

    def update_listener(self):
        # The listener's interest, derived from state like a connection's. Adding READABLE
        # back (EPOLL_CTL_MOD) re-checks readiness on the spot: clients queued meanwhile are
        # reported at once, although no new edge came for them.
        wanted = 0 if self.accept_paused else READABLE
        if wanted != self.listener_interest:
            self.epoll.modify(self.listener.fileno(), wanted | self.edge)
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
            # Sleep in the kernel only when our own ready list is empty. Otherwise just
            # collect what is new (timeout 0) and go on serving the list.
            events = self.epoll.poll(0 if self.ready else self.poll_timeout())
            if events:
                self.log("wake " + " ".join(
                    f"{'signal' if fd == wake_fd else fd}={mask_name(ev)}" for fd, ev in events))
            for fd, ev in events:
                if fd == listen_fd:
                    self.on_accept()
                elif fd == wake_fd:
                    self.running = False
                else:
                    self.dispatch(fd, ev)
            self.serve_ready_list()
            if self.accept_paused and time.monotonic() >= self.retry_accept_at:
                self.resume_accept()  # no connection closed meanwhile: try anyway

    def dispatch(self, fd, ev):
        conn = self.conns.get(fd)
        if conn is None:  # closed by an earlier event in this same batch
            return
        # Write first, then read, as in lesson 02: a send that lifts the throttle is
        # followed, in this same event, by a read of what waited meanwhile (or by a turn
        # on our own ready list, where on_writable() puts the connection). No arrival
        # announces those bytes again, so the loop must not count on one.
        if ev & (WRITABLE | TROUBLE):
            self.on_writable(conn)
        # A connection already on our ready list gets its read in its turn, not an extra one.
        if ev & (READABLE | TROUBLE) and not conn.queued and not conn.closed:
            self.on_readable(conn)
        if not conn.closed:
            self.update_interest(conn)

    def serve_ready_list(self):
        # One round: every connection that was waiting gets one turn of at most --budget
        # bytes, in order; one that still has data goes to the back of the line.
        for _ in range(len(self.ready)):
            conn = self.ready.popleft()
            conn.queued = False
            if conn.closed:  # closed since it was queued
                continue
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
    parser = argparse.ArgumentParser(
        description="Edge-triggered echo server whose drains can be broken on purpose.")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=9003, help="0 takes any free port")
    parser.add_argument("--skip-drain", choices=PITFALLS, metavar="{accept,recv,send}",
                        help="break one drain: one accept per listener edge, one "
                             f"{SKIP_RECV_CHUNK}-byte recv per EPOLLIN edge, or one "
                             f"{SKIP_SEND_CHUNK}-byte send per EPOLLOUT edge")
    parser.add_argument("--level", action="store_true",
                        help="register level-triggered (no EPOLLET), to compare")
    parser.add_argument("--budget", type=int, default=0, metavar="BYTES",
                        help="read at most BYTES from one connection per turn and serve "
                             "the ready ones round-robin (default 0: drain to EAGAIN)")
    parser.add_argument("--work", type=int, default=0, metavar="MICROSECONDS",
                        help="CPU time to spend on every KiB read, as real processing "
                             "would (default 0)")
    parser.add_argument("--trace", action="store_true",
                        help="print every wake-up, accept, read turn, interest change, close")
    parser.add_argument("--recv-size", type=int, default=RECV_SIZE, metavar="N",
                        help=f"bytes per recv() call in the drain (default {RECV_SIZE})")
    parser.error = lambda message: fail(f"{message} (see --help)")
    args = parser.parse_args()
    if not 0 <= args.port <= 65535:
        fail(f"--port must be between 0 and 65535, not {args.port}")
    if args.recv_size < 1:
        fail("--recv-size must be at least 1")
    if args.budget < 0:
        fail("--budget must be 0 (no limit) or more")
    if not 0 <= args.work <= 10_000:
        fail("--work must be between 0 and 10000 microseconds per KiB")
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
    server = EchoServer(listener, skip=args.skip_drain, level=args.level, budget=args.budget,
                        work=args.work, trace=args.trace, recv_size=args.recv_size)
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
