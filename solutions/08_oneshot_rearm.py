#!/usr/bin/env python3
"""Exercise 08: re-arm an EPOLLONESHOT connection after every turn.

This is lesson 08's echo server with --threads (two by default) and --oneshot always on,
without the processes: several threads wait on one epoll instance, and every connection is
registered with EPOLLONESHOT, so that after one report it is disabled until the thread that
got the report re-arms it with EPOLL_CTL_MOD. One method is not finished: update_interest()
tells the kernel only when the interest mask changes, as lesson 02 does. Run it, and a
client's first message is echoed; its next message, sent once the server is idle, never is:
the connection was disabled by the first report and nobody re-armed it.

Change the lines marked TODO in exercises/08_oneshot_rearm.py so that update_interest()
re-arms the connection after every turn. Then run `make check` (or
`.venv/bin/python exercises/check.py 08`). The finished version is
solutions/08_oneshot_rearm.py, with the starting point's lines beside the answer.

    python3 exercises/08_oneshot_rearm.py --trace     # listening on 127.0.0.1:9018
    python3 lessons/echo_client.py --port 9018        # type two lines: is the second echoed?
"""

import argparse
import errno
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback

EDGE = select.EPOLLET  # report arrivals, not levels (lesson 02)
READABLE = select.EPOLLIN
WRITABLE = select.EPOLLOUT
# Always reported, asked or not, and not a verdict: the next recv or send says what happened.
TROUBLE = select.EPOLLHUP | select.EPOLLERR
# After one report the item is disabled (not removed) until EPOLL_CTL_MOD re-arms it.
ONE_OWNER = select.EPOLLONESHOT

RECV_SIZE = 64 * 1024  # bytes asked for by one recv(); the drain calls it until EAGAIN
HIGH_WATER = 1 << 20  # unsent bytes at which we stop reading from that client...
LOW_WATER = 256 * 1024  # ...and the level at which we read from it again
BACKLOG = 1024  # connections the kernel may queue for us before accept()
# accept() errors that say "out of file descriptors" or "out of kernel memory": not this
# client's fault, and the next accept fails the same way (lesson 02, pause_accept).
OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
RETRY_ACCEPT = 1.0  # seconds: while accept is paused, try again this often anyway
STOP_GRACE = 0.5  # seconds the other threads get to leave their loops at exit
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def say(line):
    """One line on stdout in ONE write: lines from several processes or threads sharing a
    pipe never mix (a write of up to PIPE_BUF bytes to a pipe is atomic)."""
    try:
        os.write(sys.stdout.fileno(), (line + "\n").encode())
    except OSError:  # nobody reads our output any more: not a reason to stop serving
        pass


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
        # Held by the thread handling this connection. Without EPOLLONESHOT a second thread
        # can be handed the connection meanwhile; the lock makes it wait its turn.
        self.lock = threading.Lock()
        self.owner = None  # the name of the thread holding the lock, for the trace

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
    """Lesson 08's threaded echo loop with EPOLLONESHOT: every thread calls serve() on the
    same object, so all of them wait on one epoll instance."""

    def __init__(self, listener, trace=False, recv_size=RECV_SIZE, work=0.0, threads=2):
        self.listener = listener
        self.trace = trace
        self.recv_size = recv_size
        self.work = work  # seconds of waiting per KiB read: work that releases the GIL
        self.client_flags = EDGE | ONE_OWNER  # every connection: one owner at a time
        self.listener_flags = READABLE | EDGE
        # Several threads on one instance each take one event per epoll_wait: a thread that
        # took a batch would serve all of it alone while the others sleep.
        self.batch = 1 if threads > 1 else -1
        self.conns = {}  # fd -> Connection
        self.state = threading.Lock()  # guards conns and the listener's registration
        self.epoll = select.epoll()
        self.epoll.register(listener.fileno(), self.listener_flags)
        self.accept_paused = False  # out of fds: the listener is not watched (pause_accept)
        self.retry_accept_at = 0.0
        # The self-pipe: Python writes the number of a caught signal into wake_w, which
        # makes wake_r readable. Level-triggered and never read: once a signal came, every
        # thread's epoll_wait returns it, so every thread learns that it is time to stop.
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        signal.set_wakeup_fd(self.wake_w.fileno(), warn_on_full_buffer=False)
        self.epoll.register(self.wake_r.fileno(), READABLE)
        self.running = True

    def log(self, who, text):
        if self.trace:
            say(f"{who}: {text}")

    # -- the handlers -------------------------------------------------------------------

    def on_accept(self, who):
        # Drain the accept queue (edge-triggered).
        accepted = 0
        while True:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            except ConnectionAbortedError:  # this client gave up while queued: next one
                continue
            except OSError as e:
                if e.errno in OUT_OF_RESOURCES:
                    self.pause_accept(who, e)
                else:
                    self.log(who, f"accept failed: {e.strerror}")
                return
            accepted += 1
            sock.setblocking(False)
            conn = Connection(sock)
            with self.state:
                self.conns[sock.fileno()] = conn
            self.log(who, f"accept fd {sock.fileno()}")
            # Registered last: from here on another thread may be handed it.
            self.epoll.register(sock.fileno(), conn.interest | self.client_flags)

    def pause_accept(self, who, error):
        # Out of fds, the clients still queued stay queued and their arrival was reported
        # already (lesson 02). Stop watching the listener; add it back when an fd is free.
        # (Removed and added, as in lesson 08: ADD checks readiness on the spot like MOD, so
        # the clients queued meanwhile are reported at once.)
        with self.state:
            if self.accept_paused:
                return
            self.log(who, f"accept paused: {error.strerror}")
            self.accept_paused = True
            self.retry_accept_at = time.monotonic() + RETRY_ACCEPT
            self.epoll.unregister(self.listener.fileno())

    def resume_accept(self, who):
        with self.state:
            if not self.accept_paused:
                return
            self.log(who, "accept resumed")
            self.accept_paused = False
            self.epoll.register(self.listener.fileno(), self.listener_flags)

    def on_readable(self, who, conn):
        # Drain: recv until EAGAIN (lesson 02).
        while True:
            try:
                data = conn.sock.recv(self.recv_size)
            except BlockingIOError:  # drained; the next arrival is a new edge
                break
            except OSError as e:  # ECONNRESET and friends: this client is gone
                self.close(who, conn, e.strerror)
                return
            if not data:  # EOF: the client will send no more, but it may still be reading
                conn.peer_done = True
                break
            self.log(who, f"read fd {conn.sock.fileno()}: {len(data)} bytes")
            if self.work:  # the work this chunk stands for; the GIL is free meanwhile
                time.sleep(self.work * max(1, len(data) / 1024))
            conn.outbox += data
            self.on_writable(who, conn)  # try to send now; EPOLLOUT is only for the rest
            if conn.closed or conn.throttled:
                return  # update_interest drops EPOLLIN; adding it back re-checks readiness
        if conn.peer_done:
            self.on_writable(who, conn)  # nothing more to read: finish, or close

    def on_writable(self, who, conn):
        # Send until the outbox is empty or the kernel says EAGAIN.
        while conn.outbox:
            try:
                sent = conn.sock.send(conn.outbox)
            except BlockingIOError:  # buffer full: EPOLLOUT comes when space is freed
                break
            except OSError as e:  # EPIPE, ECONNRESET: the client stopped listening
                self.close(who, conn, e.strerror)
                return
            del conn.outbox[:sent]  # bytearray drops a prefix without copying the rest
        conn.update_throttle()
        if conn.peer_done and not conn.outbox:  # everything owed is delivered
            self.close(who, conn, "client finished")

    def close(self, who, conn, why):
        fd = conn.sock.fileno()
        self.log(who, f"close fd {fd}: {why}")
        conn.closed = True
        with self.state:
            del self.conns[fd]
        self.epoll.unregister(fd)  # before close: afterwards the fd number means nothing
        conn.sock.close()
        self.resume_accept(who)  # an fd is free again: a client still queued may have it

    def update_interest(self, who, conn):
        wanted = conn.wanted()
        fd = conn.sock.fileno()
        previous, conn.interest = conn.interest, wanted  # recorded before the kernel is told
        # exercise: the starting point has the "#|" lines, not the answer below
        #| # TODO: the EPOLLONESHOT report that brought this thread here disabled the
        #| # TODO: connection, and it stays disabled until it is re-armed with EPOLL_CTL_MOD.
        #| # TODO: Telling the kernel only when the mask changes (lesson 02's rule) leaves
        #| # TODO: it disabled: the client's next message is never reported to anyone.
        #| if wanted != previous:  # TODO: re-arm after every turn, changed or not
        #|     self.log(who, f"re-arm fd {fd}: {mask_name(wanted)}")
        #|     self.epoll.modify(fd, wanted | self.client_flags)
        # answer:
        # Re-armed after every turn, whether or not the mask changed, as the last thing this
        # thread does with the connection: from then on another thread may be handed it (so
        # dispatch calls this once it has let go of the connection's lock). MOD, not ADD (the
        # fd is still in the interest list: EEXIST), and MOD checks readiness on the spot,
        # so data that came after our last recv met EAGAIN is reported now, not lost.
        self.log(who, f"re-arm fd {fd}: {mask_name(wanted)}")
        self.epoll.modify(fd, wanted | self.client_flags)
        # end of the answer

    def poll_timeout(self):
        """How long epoll_wait may sleep: forever (-1), unless accept waits for a retry."""
        if not self.accept_paused:
            return -1
        return max(0.0, self.retry_accept_at - time.monotonic())

    # -- the loop: every thread runs it -------------------------------------------------

    def serve(self, who):
        listen_fd, wake_fd = self.listener.fileno(), self.wake_r.fileno()
        while self.running:
            events = self.epoll.poll(self.poll_timeout(), self.batch)
            self.log(who, "wake " + " ".join(
                f"{'signal' if fd == wake_fd else fd}={mask_name(ev)}" for fd, ev in events))
            for fd, ev in events:
                if fd == listen_fd:
                    self.on_accept(who)
                elif fd == wake_fd:
                    self.running = False
                else:
                    self.dispatch(who, fd, ev)
            if self.accept_paused and time.monotonic() >= self.retry_accept_at:
                self.resume_accept(who)  # no connection closed meanwhile: try anyway

    def dispatch(self, who, fd, ev):
        with self.state:
            conn = self.conns.get(fd)
        if conn is None:  # closed by an earlier event, or by another thread
            return
        mine = conn.lock.acquire(blocking=False)
        if not mine:
            # Another thread holds this connection. With EPOLLONESHOT that happens only for
            # an event taken just before another thread closed that fd and a new client got
            # the same number (Python's epoll reports fd numbers, not epoll_data).
            self.log(who, f"fd {fd} is still being handled by {conn.owner}: waiting")
            mine = conn.lock.acquire()
        try:
            if conn.closed:  # the other thread closed it meanwhile: nothing left to do
                return
            conn.owner = who
            # Write first, then read (lesson 02, dispatch).
            if ev & (WRITABLE | TROUBLE):
                self.on_writable(who, conn)
            if ev & (READABLE | TROUBLE) and not conn.closed:
                self.on_readable(who, conn)
        finally:
            if mine:
                conn.owner = None
                conn.lock.release()
        # Nobody else is handed the connection until it is re-armed (EPOLLONESHOT), so the
        # re-arm comes last, after the lock is let go: the thread handed it next finds it free.
        if not conn.closed:
            self.update_interest(who, conn)

    def shutdown(self):
        for conn in list(self.conns.values()):
            self.close("stopping", conn, "server stopping")
        signal.set_wakeup_fd(-1)
        self.epoll.close()
        self.listener.close()
        self.wake_r.close()
        self.wake_w.close()


# -- the threads ----------------------------------------------------------------------

def serve_or_die(server, who):
    """A thread's whole life. An error that escapes the loop ends the process, as it would in
    the main thread: a server quietly down one thread, with whatever that thread held left
    half done, is worse than one that stops and says why."""
    try:
        server.serve(who)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)


def run_threads(listener, args):
    """--threads N: every thread on one epoll instance."""
    server = EchoServer(listener, trace=args.trace, recv_size=args.recv_size,
                        work=args.work_ms / 1000, threads=args.threads)
    for signum in STOP_SIGNALS:
        signal.signal(signum, lambda *_: None)  # the wake-up fd does the work
    others = [threading.Thread(target=serve_or_die, args=(server, f"thread {k}"), daemon=True)
              for k in range(1, args.threads)]
    for thread in others:
        thread.start()
    host, port = listener.getsockname()[:2]
    say(f"listening on {host}:{port}")  # every thread is there: ready
    try:
        server.serve("thread 0")  # the main thread is one of them: signals arrive here
    finally:
        server.running = False
        for thread in others:  # each one sees the wake-up fd too and leaves its loop
            thread.join(timeout=STOP_GRACE)
        server.shutdown()


# -- the program ------------------------------------------------------------------------

def fail(message):
    """A mistake of the user: one clear line, status 2, no traceback."""
    print(f"{sys.argv[0]}: error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_args():
    parser = argparse.ArgumentParser(
        description="Echo server: threads on one epoll instance, EPOLLONESHOT connections.")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=9018, help="0 takes any free port")
    parser.add_argument("--threads", type=int, default=2, metavar="N",
                        help="threads sharing one epoll instance (default 2)")
    parser.add_argument("--work-ms", type=float, default=0.0, metavar="MS",
                        help="milliseconds of waiting (not computing) per KiB read")
    parser.add_argument("--trace", action="store_true",
                        help="print what each thread does")
    parser.add_argument("--recv-size", type=int, default=RECV_SIZE, metavar="N",
                        help=f"bytes per recv() call (default {RECV_SIZE})")
    parser.error = lambda message: fail(f"{message} (see --help)")
    args = parser.parse_args()
    if not 0 <= args.port <= 65535:
        fail(f"--port must be between 0 and 65535, not {args.port}")
    if args.recv_size < 1:
        fail("--recv-size must be at least 1")
    if not 1 <= args.threads <= 64:
        fail(f"--threads must be between 1 and 64, not {args.threads}")
    if not 0 <= args.work_ms <= 10_000:
        fail("--work-ms must be between 0 and 10000")
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
    run_threads(listen(args.host, args.port), args)


if __name__ == "__main__":
    main()
