#!/usr/bin/env python3
"""Exercise 07: raise the soft file descriptor limit at start-up, or say clearly why not.

This is lesson 07's echo server. Every client costs it a file descriptor, and a process may
hold only as many as its soft limit (RLIMIT_NOFILE, what `ulimit -n` shows): often 1024, far
fewer than ten thousand clients. The process may raise its soft limit itself, up to the hard
limit (`ulimit -Hn`); only a privileged process may go beyond that.

Make `--max-fds N` work: when the server starts, it sets its soft limit to N and keeps the
hard limit as it is. When the hard limit is lower than N, it stops with one clear line on
stderr that names the hard limit, and status 2, like every mistake of the user (a traceback
would be no help). Change the lines marked TODO in exercises/07_fd_limit.py, then run
`make check 07` (or `.venv/bin/python exercises/check.py 07`). The finished version is
solutions/07_fd_limit.py, with the starting point's lines beside the answer. The exercise
listens on a port of its own, 9017, so that it can run beside the lesson:

    python3 exercises/07_fd_limit.py --max-fds 4096     # listening on 127.0.0.1:9017
    python3 lessons/echo_client.py --port 9017          # in another terminal
    python3 exercises/07_fd_limit.py --max-fds 100000000    # over the hard limit: one line

The rest of lesson 07's description follows.

Run it, then talk to it from another terminal:

    python3 lessons/07_why_epoll.py                      # epoll, listening on 127.0.0.1:9007
    python3 lessons/07_why_epoll.py --backend poll       # the same loop on poll(2)
    python3 lessons/07_why_epoll.py --backend select     # ... and on select(2)
    python3 lessons/echo_client.py --port 9007

Everything a server does with its clients is the same whatever tells it who is ready: accept,
recv, send, close. Only two things differ, and this file keeps them in one small class per
back-end: how the server says what it wants to hear about (the registration), and how it
waits (the wait). Read the three classes side by side; they are the whole difference.

- select(2) and poll(2) have no memory. Every call hands the kernel the whole list of
  descriptors, the kernel checks every one of them (ready or not), and the caller searches
  the answer. One busy client among ten thousand idle ones costs ten thousand checks per
  call. select also stops at descriptor number 1024 (FD_SETSIZE, the size of its bit sets).
- epoll keeps the interest list in the kernel (epoll_ctl, once per change) and a ready list
  that the kernel fills as things happen; epoll_wait only hands that list out. Its cost
  follows the number of ready descriptors, not the number watched.

Notebook 07 measures both claims with one busy client among N idle ones.

select and poll report levels only (a descriptor is reported as long as it is ready), so
epoll is used level-triggered here too, and the three do exactly the same work per message:
one wait, one recv, one send. --edge registers with EPOLLET instead (epoll only), and then
the handlers must drain, accepting and reading until EAGAIN, as lesson 02 explains.

--naive-accept (off by default) puts back the mistake of treating a failed accept like any
other: when the process is out of file descriptors (EMFILE), the client stays in the
kernel's queue and the listener stays ready. Level-triggered, the loop is woken again at
once, forever: a spin. With --edge, nothing new arrives for the clients already queued: a
stall. The default pauses accept instead, and resumes when a close frees a descriptor.

--trace prints one line per wake-up of the loop ("wake 6=IN signal=IN": sockets by fd
number, the signal wake-up as `signal`), accept and close. SIGUSR1 (`kill -USR1 PID`) makes
the server print how many times its loop has called the wait, accept, recv and send so
far, each one system call (`strace -c -p PID` shows the same from the kernel's side).
See select(2), poll(2) and epoll(7) for the contracts.
"""

import argparse
import errno
import resource
import select
import signal
import socket
import sys
import time

# The loop's own words for readiness. Each back-end translates them to its kernel's bits and
# back, so nothing above the back-ends knows which one runs.
READABLE = 1
WRITABLE = 2

RECV_SIZE = 64 * 1024  # bytes asked for by one recv()
HIGH_WATER = 1 << 20  # unsent bytes at which we stop reading from that client...
LOW_WATER = 256 * 1024  # ...and the level at which we read from it again
BACKLOG = 1024  # connections the kernel may queue for us before accept()
# accept() errors that say "out of file descriptors" (ours: EMFILE, the system's: ENFILE) or
# "out of kernel memory": not this client's fault, and the next accept fails the same way.
OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
RETRY_ACCEPT = 1.0  # seconds: while accept is paused, try again this often anyway
# select(2): "select() can monitor only file descriptors numbers that are less than
# FD_SETSIZE (1024)". The C library's fd_set is a bit set of that many bits; Python refuses a
# larger number with ValueError before it calls the kernel.
FD_SETSIZE = 1024


def mask_name(mask):
    names = [name for bit, name in ((READABLE, "IN"), (WRITABLE, "OUT")) if mask & bit]
    return "|".join(names) or "-"


# -- the three back-ends: the registration and the wait, nothing else ----------------------
# Each has add, modify and remove (the registration), wait(timeout) -> [(fd, mask)] (the
# wait, timeout in seconds or None for "until something happens") and close.

class SelectBackend:
    """select(2): the interest lives in this process and goes to the kernel whole, every call."""

    name = "select"

    def __init__(self, edge=False):
        self.interest = {}  # fd -> mask: select has no registration, only this dictionary

    def add(self, fd, mask):
        self.interest[fd] = mask

    modify = add

    def remove(self, fd):
        self.interest.pop(fd, None)

    def wait(self, timeout):
        # Three lists built from every watched fd, copied into bit sets, checked one by one
        # by the kernel, copied back, and searched: each step costs as much as fds are watched.
        want_read = [fd for fd, mask in self.interest.items() if mask & READABLE]
        want_write = [fd for fd, mask in self.interest.items() if mask & WRITABLE]
        readable, writable, _ = select.select(want_read, want_write, [], timeout)
        ready = dict.fromkeys(readable, READABLE)
        for fd in writable:
            ready[fd] = ready.get(fd, 0) | WRITABLE
        return list(ready.items())

    def close(self):
        self.interest.clear()


class PollBackend:
    """poll(2): no bit sets and no 1024 wall, but still the whole list on every call.

    It uses poll(2)'s own bits, select.POLLIN and the rest, here and nowhere else. On Linux
    they have the same values as the EPOLL ones, which is exactly why each back-end keeps
    its own names: a mask written for one call and read by another works by accident."""

    name = "poll"

    def __init__(self, edge=False):
        self.poller = select.poll()  # Python keeps the pollfd array and reuses it

    def add(self, fd, mask):
        self.poller.register(fd, self.bits(mask))

    def modify(self, fd, mask):
        self.poller.modify(fd, self.bits(mask))

    def remove(self, fd):
        self.poller.unregister(fd)

    @staticmethod
    def bits(mask):
        return ((select.POLLIN if mask & READABLE else 0)
                | (select.POLLOUT if mask & WRITABLE else 0))

    def wait(self, timeout):
        ready = self.poller.poll(None if timeout is None else timeout * 1000)  # milliseconds
        # POLLHUP and POLLERR come unasked and are no verdict: the next recv or send says
        # what happened, so they mean "try both directions". POLLNVAL (not an open fd)
        # is a bug of ours; the recv that follows fails and closes that connection.
        trouble = select.POLLHUP | select.POLLERR | select.POLLNVAL
        return [(fd, (READABLE if ev & (select.POLLIN | trouble) else 0)
                 | (WRITABLE if ev & (select.POLLOUT | trouble) else 0)) for fd, ev in ready]

    def close(self):
        self.poller = None


class EpollBackend:
    """epoll(7): the interest list and the ready list live in the kernel."""

    name = "epoll"

    def __init__(self, edge=False):
        self.epoll = select.epoll()
        self.edge = select.EPOLLET if edge else 0  # --edge: report arrivals, not levels

    def add(self, fd, mask):
        self.epoll.register(fd, self.bits(mask))  # EPOLL_CTL_ADD, once per descriptor

    def modify(self, fd, mask):
        # EPOLL_CTL_MOD also checks readiness on the spot: work set aside meanwhile (an
        # accept paused, a read throttled) is reported at once, edge-triggered or not.
        self.epoll.modify(fd, self.bits(mask))

    def remove(self, fd):
        self.epoll.unregister(fd)  # EPOLL_CTL_DEL

    def bits(self, mask):
        return ((select.EPOLLIN if mask & READABLE else 0)
                | (select.EPOLLOUT if mask & WRITABLE else 0) | self.edge)

    def wait(self, timeout):
        ready = self.epoll.poll(-1 if timeout is None else timeout)  # only the ready ones
        trouble = select.EPOLLHUP | select.EPOLLERR  # unasked, "try both directions"
        return [(fd, (READABLE if ev & (select.EPOLLIN | trouble) else 0)
                 | (WRITABLE if ev & (select.EPOLLOUT | trouble) else 0)) for fd, ev in ready]

    def close(self):
        self.epoll.close()


BACKENDS = {backend.name: backend for backend in (SelectBackend, PollBackend, EpollBackend)}


# -- the echo loop: the same for every back-end ---------------------------------------------

class Connection:
    """Everything the server knows about one client, in one place."""

    def __init__(self, sock):
        self.sock = sock
        self.outbox = bytearray()  # echoed bytes the kernel has not taken yet
        self.peer_done = False  # the client sent EOF (close or shutdown(SHUT_WR))
        self.throttled = False  # outbox passed HIGH_WATER: stop reading until LOW_WATER
        self.interest = READABLE  # what the back-end watches for now
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
        if self.outbox:  # ask for WRITABLE only while there is something to write
            mask |= WRITABLE
        return mask


class EchoServer:
    def __init__(self, listener, backend, edge=False, trace=False, naive_accept=False):
        self.listener = listener
        self.backend = backend
        # Levels: one recv per report, what is left is reported again. Edges: read until
        # EAGAIN. (Draining under levels would be correct too, but a client that answers
        # fast keeps the loop reading and never waiting, and here the wait is what we measure.)
        self.drain = edge
        self.trace = trace
        self.naive_accept = naive_accept
        self.conns = {}  # fd -> Connection
        self.calls = dict.fromkeys(("wait", "accept", "recv", "send"), 0)  # for SIGUSR1
        self.backend.add(listener.fileno(), READABLE)
        self.listener_interest = READABLE
        self.accept_paused = False  # out of fds: the listener is not watched (pause_accept)
        self.retry_accept_at = 0.0  # when to try accept again if no connection closes first
        # The self-pipe: a signal handler cannot touch the loop, but Python writes the
        # signal number into this socket, which wakes the wait like any client would.
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        signal.set_wakeup_fd(self.wake_w.fileno(), warn_on_full_buffer=False)
        self.backend.add(self.wake_r.fileno(), READABLE)
        self.running = True

    def log(self, text):
        if self.trace:
            print(text, flush=True)

    # -- the handlers -------------------------------------------------------------------

    def on_accept(self):
        # Accept until the queue is empty, whatever the trigger: edges demand it (lesson 02),
        # and under levels one accept per report would be correct but slow, every client
        # costing a whole wait, which with select or poll walks every descriptor watched.
        while True:
            self.calls["accept"] += 1
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:  # queue empty
                return
            except ConnectionAbortedError:  # this client gave up while queued: next one
                continue
            except OSError as e:
                if e.errno in OUT_OF_RESOURCES and not self.naive_accept:
                    self.pause_accept(e)
                else:
                    # --- the --naive-accept deviation: out of fds lands here too, like any
                    # failed accept, "try again next time". But the client is still queued
                    # and the listener still ready: levels report it again at once, forever
                    # (a spin); no edge comes again for it (a stall, until a new arrival).
                    self.log(f"accept failed: {e.strerror}")
                return
            sock.setblocking(False)
            conn = Connection(sock)
            self.conns[sock.fileno()] = conn
            self.backend.add(sock.fileno(), conn.interest)
            self.log(f"accept fd {sock.fileno()}")

    def pause_accept(self, error):
        # Stop watching the listener until close() frees an fd, or RETRY_ACCEPT passes
        # (ENFILE and ENOMEM are freed by other processes, which tell us nothing). Watching
        # it again re-checks readiness (select and poll always do; epoll's MOD does), so
        # the clients queued meanwhile are reported although nothing new arrived for them.
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
        # Levels: one recv per report, however much is waiting; the rest is reported again.
        # Edges: recv until EAGAIN, or what is left waits for the next arrival (lesson 02).
        while True:
            self.calls["recv"] += 1
            try:
                data = conn.sock.recv(RECV_SIZE)
            except BlockingIOError:  # drained; the next arrival is reported
                break
            except OSError as e:  # ECONNRESET and friends: this client is gone
                self.close(conn, e.strerror)
                return
            if not data:  # EOF: the client will send no more, but it may still be reading
                conn.peer_done = True
                break
            conn.outbox += data
            self.on_writable(conn)  # try to send now; WRITABLE is only for what is left
            if conn.closed or conn.throttled:
                # Too much output pending: stop reading with data possibly left behind.
                # wanted() drops READABLE now, and watching it again later reports the rest.
                return
            if not self.drain:
                return
        if conn.peer_done:
            self.on_writable(conn)  # nothing more to read: finish, or close if all is sent

    def on_writable(self, conn):
        # Send until the outbox is empty or the kernel says EAGAIN.
        while conn.outbox:
            self.calls["send"] += 1
            try:
                sent = conn.sock.send(conn.outbox)
            except BlockingIOError:  # buffer full: WRITABLE is reported when space is freed
                break
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
        self.backend.remove(fd)  # before close: afterwards the fd number means nothing
        conn.sock.close()
        self.resume_accept()  # an fd is free again: a client still queued may have it

    def update_interest(self, conn):
        wanted = conn.wanted()
        if wanted != conn.interest:  # tell the back-end only when something changed
            self.backend.modify(conn.sock.fileno(), wanted)
            conn.interest = wanted

    def update_listener(self):
        wanted = 0 if self.accept_paused else READABLE
        if wanted != self.listener_interest:
            self.backend.modify(self.listener.fileno(), wanted)
            self.listener_interest = wanted

    def wait_timeout(self):
        """How long the wait may sleep: until something happens (None), unless accept
        waits for a retry."""
        if not self.accept_paused:
            return None
        return max(0.0, self.retry_accept_at - time.monotonic())

    # -- the loop -----------------------------------------------------------------------

    def serve(self):
        listen_fd, wake_fd = self.listener.fileno(), self.wake_r.fileno()
        while self.running:
            self.calls["wait"] += 1
            events = self.backend.wait(self.wait_timeout())  # the one line that differs
            if self.trace:
                self.log("wake " + " ".join(  # the self-pipe is named: "signal"
                    f"{'signal' if fd == wake_fd else fd}={mask_name(ev)}" for fd, ev in events))
            for fd, ev in events:
                if fd == listen_fd:
                    self.on_accept()
                elif fd == wake_fd:
                    self.on_signal()
                else:
                    self.dispatch(fd, ev)
            if self.accept_paused and time.monotonic() >= self.retry_accept_at:
                self.resume_accept()  # no connection closed meanwhile: try anyway

    def on_signal(self):
        # Python wrote the number of each signal caught into the self-pipe: SIGUSR1 asks for
        # the counts, any other (SIGINT, SIGTERM) for the end. Read them all (--edge).
        while True:
            try:
                caught = self.wake_r.recv(64)
            except BlockingIOError:
                return
            for signum in caught:
                if signum == signal.SIGUSR1:
                    print("calls: " + ", ".join(f"{count} {name}"
                                                for name, count in self.calls.items()), flush=True)
                else:
                    self.running = False

    def dispatch(self, fd, ev):
        conn = self.conns.get(fd)
        if conn is None:  # closed by an earlier event in this same batch
            return
        if ev & WRITABLE:
            self.on_writable(conn)
        if ev & READABLE and not conn.closed:
            self.on_readable(conn)
        if not conn.closed:
            self.update_interest(conn)

    def shutdown(self):
        for conn in list(self.conns.values()):
            self.close(conn, "server stopping")
        signal.set_wakeup_fd(-1)
        self.backend.close()
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
        description="Echo server on select, poll or epoll: one loop, three back-ends.")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=9017, help="0 takes any free port")
    parser.add_argument("--backend", choices=sorted(BACKENDS), default="epoll",
                        help="what the loop waits with (default epoll)")
    parser.add_argument("--edge", action="store_true",
                        help="epoll only: edge-triggered (EPOLLET) instead of level-triggered")
    parser.add_argument("--naive-accept", action="store_true",
                        help="the mistake: out of fds, accept again on the next wake "
                             "(a spin; with --edge, a stall)")
    parser.add_argument("--trace", action="store_true",
                        help="print every wake-up of the loop, accept and close")
    parser.add_argument("--max-fds", type=int, metavar="N",
                        help="raise the soft limit on open files to N at start-up")
    parser.error = lambda message: fail(f"{message} (see --help)")
    args = parser.parse_args()
    if not 0 <= args.port <= 65535:
        fail(f"--port must be between 0 and 65535, not {args.port}")
    if args.edge and args.backend != "epoll":
        fail(f"--edge needs --backend epoll: {args.backend} reports levels only")
    if args.max_fds is not None and args.max_fds < 16:
        fail(f"--max-fds must be at least 16 (the server needs a few itself), not {args.max_fds}")
    return args


def raise_fd_limit(wanted):
    """--max-fds: set the soft RLIMIT_NOFILE to `wanted`, or fail() in one line saying why not."""
    # exercise: the starting point has the "#|" lines, not the answer below
    #| # TODO: read the limits (resource.getrlimit(resource.RLIMIT_NOFILE) gives soft, hard);
    #| # TODO: if the hard limit is lower than wanted (and not resource.RLIM_INFINITY), call
    #| # TODO: fail() with one line naming both numbers; otherwise resource.setrlimit the soft
    #| # TODO: limit to wanted, the hard limit unchanged.
    #| pass  # TODO
    # answer:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and wanted > hard:
        fail(f"--max-fds {wanted} is above this process's hard limit on open files, {hard}; "
             "only root can raise that (ulimit -Hn, or limits.conf)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    # end of the answer


def keep_fds_below_fd_setsize():
    # select cannot watch fd 1024 or above, and the kernel hands out the lowest free number.
    # With the soft limit at FD_SETSIZE, no number select cannot watch is ever handed out:
    # the accept that would get one fails with EMFILE instead, the client waits in the
    # queue, and the loop pauses accept as it does for any shortage of fds.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft > FD_SETSIZE:
        resource.setrlimit(resource.RLIMIT_NOFILE, (FD_SETSIZE, hard))


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
    if args.max_fds is not None:
        raise_fd_limit(args.max_fds)
    if args.backend == "select":
        keep_fds_below_fd_setsize()  # select cannot use more than 1024, whatever was asked
    listener = listen(args.host, args.port)
    backend = BACKENDS[args.backend](edge=args.edge)
    server = EchoServer(listener, backend, edge=args.edge, trace=args.trace,
                        naive_accept=args.naive_accept)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        signal.signal(signum, lambda *_: None)  # the wake-up fd does the work
    host, port = listener.getsockname()[:2]
    print(f"listening on {host}:{port}", flush=True)
    try:
        server.serve()
    finally:
        server.shutdown()


if __name__ == "__main__":
    main()
