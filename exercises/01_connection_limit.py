#!/usr/bin/env python3
"""Exercise 01: cap the number of connections, with a clear refusal.

This is lesson 01's level-triggered echo server with one new flag, --max-conns N. Make it
keep its promise: while N clients are connected, a new client receives REFUSAL and is
closed, and the clients already connected go on being served. Change the lines marked TODO
in exercises/01_connection_limit.py, then run `make check 01` (or
`.venv/bin/python exercises/check.py 01`). The finished version is
solutions/01_connection_limit.py, with the starting point's lines beside the answer.

The exercise listens on a port of its own, 9011, so that it can run beside the lesson:

    python3 exercises/01_connection_limit.py --max-conns 1    # listening on 127.0.0.1:9011
    python3 lessons/echo_client.py --port 9011     # in two more terminals: the second is refused

The rest of lesson 01's description follows.

Every byte a client sends comes back to it. One thread, one epoll instance, any number of
clients. Run it, then talk to it from another terminal:

    python3 lessons/01_lt_echo.py              # listening on 127.0.0.1:9001
    python3 lessons/echo_client.py --port 9001

Level-triggered (the default mode of epoll) means: epoll_wait reports a socket for as long
as it is ready. Data left unread is reported again on the next call, so this server may read
once per event and still never lose track of a connection. Lesson 02 drops that safety net:
edge-triggered epoll reports what arrives (data, a client, freed space, a close), not what is
still there.

--trace prints one line per wake-up of the loop and per change of interest, so that a
notebook (or you) can count what the kernel reported. See epoll(7) for the contract.
"""

import argparse
import errno
import select
import signal
import socket
import sys
import time

READABLE = select.EPOLLIN
WRITABLE = select.EPOLLOUT
# The kernel always reports these, asked or not. They are not a verdict: the next recv or
# send says what really happened (EOF, reset, ...), so treat them as "both directions ready".
TROUBLE = select.EPOLLHUP | select.EPOLLERR

RECV_SIZE = 64 * 1024  # bytes asked for by one recv()
HIGH_WATER = 1 << 20  # unsent bytes at which we stop reading from that client...
LOW_WATER = 256 * 1024  # ...and the level at which we read from it again
BACKLOG = 1024  # connections the kernel may queue for us before accept()
# accept() errors that say "out of file descriptors" (ours: EMFILE, the system's: ENFILE) or
# "out of kernel memory": not this client's fault, and the next accept fails the same way.
OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
RETRY_ACCEPT = 1.0  # seconds: while accept is paused, try again this often anyway
MAX_CONNS = 100  # clients served at once, unless --max-conns says otherwise
REFUSAL = b"server full, try again later\n"


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
    def __init__(self, listener, trace=False, recv_size=RECV_SIZE, max_conns=MAX_CONNS):
        self.listener = listener
        self.max_conns = max_conns
        self.trace = trace
        self.recv_size = recv_size
        self.conns = {}  # fd -> Connection
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
        # TODO: when self.max_conns clients are connected already, refuse this one: send
        # TODO: it REFUSAL, close it, and return before it is registered.
        conn = Connection(sock)
        self.conns[sock.fileno()] = conn
        self.epoll.register(sock.fileno(), conn.interest)
        self.log(f"accept fd {sock.fileno()}")

    def pause_accept(self, error):
        # The trap: accept failed for want of an fd or of memory, and the client is still in
        # the kernel's queue, so the listener is still readable. Level-triggered, epoll_wait
        # reports it again at once, every pass, and every accept fails again: a loop that
        # uses 100% of a CPU and serves nobody until an fd is freed. So stop watching the
        # listener; close() resumes when it frees an fd, and RETRY_ACCEPT bounds the pause
        # (ENFILE and ENOMEM are freed by other processes, which tell us nothing).
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
        # One recv per event, however much is waiting: level-triggering reports the rest.
        try:
            data = conn.sock.recv(self.recv_size)
        except BlockingIOError:
            return
        except OSError as e:  # ECONNRESET and friends: this client is gone
            self.close(conn, e.strerror)
            return
        if not data:  # EOF: the client will send no more, but it may still be reading
            conn.peer_done = True
            if not conn.outbox:
                self.close(conn, "client finished")
            return
        conn.outbox += data
        self.on_writable(conn)  # try to send now; EPOLLOUT is only for what is left

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
    parser = argparse.ArgumentParser(description="Echo server on level-triggered epoll.")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=9011, help="0 takes any free port")
    parser.add_argument("--trace", action="store_true",
                        help="print every wake-up of the loop and every interest change")
    parser.add_argument("--recv-size", type=int, default=RECV_SIZE, metavar="N",
                        help=f"bytes per recv() call (default {RECV_SIZE})")
    parser.add_argument("--max-conns", type=int, default=MAX_CONNS, metavar="N",
                        help=f"clients served at once (default {MAX_CONNS})")
    parser.error = lambda message: fail(f"{message} (see --help)")
    args = parser.parse_args()
    if not 0 <= args.port <= 65535:
        fail(f"--port must be between 0 and 65535, not {args.port}")
    if args.recv_size < 1:
        fail("--recv-size must be at least 1")
    if args.max_conns < 1:
        fail("--max-conns must be at least 1")
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
                        max_conns=args.max_conns)
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
