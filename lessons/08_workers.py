#!/usr/bin/env python3
"""Lesson 08: many threads, many processes. EPOLLONESHOT, the herd, EPOLLEXCLUSIVE, SO_REUSEPORT.

Run it, then talk to it from another terminal:

    python3 lessons/08_workers.py                        # one process, one thread (port 9008)
    python3 lessons/08_workers.py --threads 4 --trace    # four threads on one epoll instance
    python3 lessons/08_workers.py --threads 4 --oneshot  # ... each connection owned by one
    python3 lessons/08_workers.py --processes 4          # four workers, one listening socket
    python3 lessons/08_workers.py --processes 4 --exclusive
    python3 lessons/08_workers.py --processes 4 --reuseport
    python3 lessons/echo_client.py --port 9008

Without flags this is lesson 02's edge-triggered echo server. The flags spread its work:

--threads N: N threads call epoll_wait on ONE epoll instance. Edge-triggered, each arrival
is reported once, to one thread, but the next arrival on the same connection can be
reported to another thread while the first is still handling the connection: two threads
in one connection's state at once. Unguarded, they would interleave its bytes in any
order and could both close it (--no-lock shows it: a small piece overtakes a big one). Each
connection here has a lock, and a thread that finds it taken says so in the trace ("fd N is
still being handled by thread K") and waits for it: a thread spent waiting instead of
serving anybody.

--oneshot adds EPOLLONESHOT: after one report the kernel disables the connection in the
interest list (it stays there) until the thread that got the report re-arms it with
EPOLL_CTL_MOD, as the last thing it does. Until then no other thread hears of it, so one
thread owns the connection from its report to its re-arm. It is re-armed, not re-added:
EPOLL_CTL_ADD on an fd still in the list fails with EEXIST, and MOD checks readiness on
the spot, so what arrived while the connection was disabled is reported at once.

In Python the threads take turns on one interpreter lock (the GIL): only one runs Python code
at a time, and the others run only while it waits in a system call (recv, send, epoll_wait,
sleep). --work-ms MS stands for work that waits like that: MS milliseconds for each KiB read
(a smaller chunk counts as one KiB). Threads share out waiting, not computing: for CPU, use
processes.

--processes N: the parent makes the listening socket, starts N worker processes and then
only supervises them. Each worker has its own epoll instance, and the listener in each.
Every client wakes every worker sleeping on that listener (the thundering herd); one wins
the accept, the rest go back to sleep. The trace shows only part of the herd: a woken
epoll_wait checks the listener again before it returns, and one that finds the queue
already empty goes back to sleep inside the kernel without returning. Only the workers
that return in time print a line ("accept: nothing waiting (another took it)"); the whole
herd shows in the kernel's count of each worker's wake-ups (voluntary_ctxt_switches in
/proc/PID/status).

--exclusive registers the listener with EPOLLEXCLUSIVE (Linux 4.5, EPOLL_CTL_ADD only): a
client wakes one or more of the waiting workers instead of all (epoll_ctl(2)). It promises
neither exactly one nor a fair share: while they all wait, the same worker is woken for
client after client, and the others get nothing to do.

--reuseport gives each worker a listener of its own, all bound to one port with SO_REUSEPORT:
one accept queue per worker, and the kernel picks the queue by a hash of the client's
address and port. Nobody is woken for somebody else's client, and the spread is even, but
the hash does not know how busy a worker is: clients hashed to a busy worker wait for it.

The workers are supervised. SIGTERM or SIGINT to the parent stops every worker (SIGTERM),
waits for them, and exits with status 0. A worker ignores SIGINT: Ctrl-C in a terminal
signals the whole process group, and the workers wait for their parent's SIGTERM. A worker
that dies is reported ("worker K (pid P) died: ..."). Each worker asks the kernel for
SIGKILL when its parent dies (prctl PR_SET_PDEATHSIG), so no worker outlives the parent,
even a parent killed with SIGKILL.

--trace prints what each thread or worker does: "thread K: ..." or "worker K: ...", one line
per wake-up, accept, read, re-arm, close. See epoll(7), epoll_ctl(2), socket(7).
"""

import argparse
import ctypes
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
# Several epoll instances waiting on one file: a wake-up goes to one or more, not all.
ONE_WAKER = select.EPOLLEXCLUSIVE

RECV_SIZE = 64 * 1024  # bytes asked for by one recv(); the drain calls it until EAGAIN
HIGH_WATER = 1 << 20  # unsent bytes at which we stop reading from that client...
LOW_WATER = 256 * 1024  # ...and the level at which we read from it again
BACKLOG = 1024  # connections the kernel may queue for us before accept()
# accept() errors that say "out of file descriptors" or "out of kernel memory": not this
# client's fault, and the next accept fails the same way (lesson 02, pause_accept).
OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
RETRY_ACCEPT = 1.0  # seconds: while accept is paused, try again this often anyway
STOP_GRACE = 0.5  # seconds the parent gives its workers to stop before it kills them
PR_SET_PDEATHSIG = 1  # prctl(2): the signal this process gets when its parent dies
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
    """Lesson 02's edge-triggered echo loop, safe to run in several threads at once.

    Every thread calls serve() on the same object, so all of them wait on one epoll
    instance. A worker process makes its own EchoServer, with an epoll instance of its own.
    """

    def __init__(self, listener, trace=False, recv_size=RECV_SIZE, oneshot=False,
                 exclusive=False, work=0.0, threads=1, no_lock=False):
        self.listener = listener
        self.trace = trace
        self.recv_size = recv_size
        self.work = work  # seconds of waiting per KiB read: work that releases the GIL
        self.no_lock = no_lock
        self.client_flags = EDGE | (ONE_OWNER if oneshot else 0)
        self.oneshot = oneshot
        self.listener_flags = READABLE | EDGE | (ONE_WAKER if exclusive else 0)
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
        # Drain the accept queue (edge-triggered). With several processes on one listener,
        # another worker may have taken the client this wake-up was for: EAGAIN at once.
        accepted = 0
        while True:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                if not accepted:
                    self.log(who, "accept: nothing waiting (another took it)")
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
        # Removed and added, not modified: EPOLLEXCLUSIVE is allowed with EPOLL_CTL_ADD only.
        # ADD checks readiness on the spot like MOD, so the clients queued meanwhile are
        # reported at once.
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
        # --- EPOLLONESHOT: the report that brought us here disabled the connection, and it
        # stays disabled until we re-arm it, even if the mask we want has not changed. Leave
        # it disabled and this client is never heard from again. The re-arm is EPOLL_CTL_MOD
        # (the fd is still in the interest list: ADD would fail with EEXIST), and it is the
        # last thing this thread does with the connection: from then on, another thread may
        # be handed it (so dispatch calls this once it has let go of the connection's lock).
        # MOD checks readiness on the spot, so data that came after our last recv met EAGAIN
        # is reported now, not lost.
        if self.oneshot:
            self.log(who, f"re-arm fd {fd}: {mask_name(wanted)}")
            self.epoll.modify(fd, wanted | self.client_flags)
        elif wanted != previous:  # one epoll_ctl only when something changed
            self.log(who, f"interest fd {fd}: {mask_name(previous)} -> {mask_name(wanted)}")
            self.epoll.modify(fd, wanted | self.client_flags)

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
            # Two threads handed one connection: only possible without EPOLLONESHOT (or, as
            # Python's epoll reports fd numbers, for an event taken just before another
            # thread closed that fd and a new client got the same number).
            self.log(who, f"fd {fd} is still being handled by {conn.owner}: waiting")
            # --- the --no-lock deviation: go on beside the other thread, as code that
            # trusts edge-triggering to keep threads apart would. This thread reads the
            # next piece and may send its echo before the other sends the piece before it.
            if not self.no_lock:
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
            if not conn.closed and not self.oneshot:
                self.update_interest(who, conn)  # under the lock: others may be handed it
        finally:
            if mine:
                conn.owner = None
                conn.lock.release()
        # With EPOLLONESHOT nobody else is handed the connection until it is re-armed, so the
        # re-arm comes last, after the lock is let go: the thread handed it next finds it free.
        if self.oneshot and not conn.closed:
            self.update_interest(who, conn)

    def shutdown(self):
        for conn in list(self.conns.values()):
            self.close("stopping", conn, "server stopping")
        signal.set_wakeup_fd(-1)
        self.epoll.close()
        self.listener.close()
        self.wake_r.close()
        self.wake_w.close()


# -- one process, N threads -------------------------------------------------------------

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
    """The default (one thread) and --threads N: every thread on one epoll instance."""
    server = EchoServer(listener, trace=args.trace, recv_size=args.recv_size,
                        oneshot=args.oneshot, work=args.work_ms / 1000, threads=args.threads,
                        no_lock=args.no_lock)
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


# -- N processes, supervised ------------------------------------------------------------

def die_with_parent(parent):
    """Ask the kernel for SIGKILL when the parent dies: no worker outlives a supervisor
    killed with SIGKILL, which has no chance to stop them. (SIGKILL: a worker stopped with
    SIGSTOP would keep any other signal pending, forever.)"""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before prctl: no signal will come
        os._exit(1)


def worker(index, listener, args, parent):
    """A worker process's whole life; it never returns."""
    status = 0
    try:
        die_with_parent(parent)
        # Ctrl-C in a terminal sends SIGINT to the whole process group: to every worker as
        # well as the parent. A worker leaves stopping to its supervisor: it ignores SIGINT
        # and stops on the parent's SIGTERM, so Ctrl-C stops the workers the one supervised
        # way, not each on its own (which the parent would report as a death).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, lambda *_: None)  # the wake-up fd does the work
        # Its own epoll instance, made after fork: an instance made before fork would be
        # one instance shared by every worker, not one each.
        server = EchoServer(listener, trace=args.trace, recv_size=args.recv_size,
                            exclusive=args.exclusive, work=args.work_ms / 1000)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # pending ones act now
        try:
            server.serve(f"worker {index}")
        finally:
            server.shutdown()
    except BaseException:
        traceback.print_exc()
        status = 1
    finally:
        sys.stdout.flush()
        os._exit(status)  # never return into the parent's code


def describe(status):
    """A worker's wait status in words."""
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


class Supervisor:
    """The parent: starts the workers, reports deaths, stops them all on SIGTERM/SIGINT.

    It too waits in epoll_wait: on a pidfd for each worker (readable once that worker has
    exited, Linux 5.3) and on the signal wake-up socket.
    """

    def __init__(self, listeners, args):
        self.args = args
        self.workers = {}  # pidfd -> (index, pid)
        self.epoll = select.epoll()
        parent = os.getpid()
        # Block the stop signals while forking: a worker inherits the mask and unblocks
        # them once its handlers are set, so an early SIGTERM is held, not fatal.
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        for index, listener in enumerate(listeners):
            pid = os.fork()
            if pid == 0:
                self.epoll.close()  # the parent's, and the pidfds of the workers before
                for pidfd in self.workers:
                    os.close(pidfd)
                for other in listeners:  # a REUSEPORT worker keeps only its own listener
                    if other is not listener:
                        other.close()
                worker(index, listener, args, parent)
            pidfd = os.pidfd_open(pid)
            self.workers[pidfd] = (index, pid)
            self.epoll.register(pidfd, READABLE)
        for listener in set(listeners):  # the workers hold them; the parent accepts nothing
            listener.close()
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        signal.set_wakeup_fd(self.wake_w.fileno(), warn_on_full_buffer=False)
        for signum in STOP_SIGNALS:
            signal.signal(signum, lambda *_: None)
        self.epoll.register(self.wake_r.fileno(), READABLE)

    def start(self, address):
        say(f"listening on {address[0]}:{address[1]}")
        for index, pid in sorted(self.workers.values()):
            say(f"worker {index} started, pid {pid}")
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)

    def reap(self, pidfd):
        """Collect one worker that has exited; return (index, pid, its status in words)."""
        index, pid = self.workers.pop(pidfd)
        self.epoll.unregister(pidfd)
        os.close(pidfd)
        _, status = os.waitpid(pid, 0)  # it has exited: this does not wait
        return index, pid, status

    def supervise(self):
        """Until a stop signal: report each worker that dies. Returns the exit status."""
        while self.workers:
            for fd, _ in self.epoll.poll():
                if fd == self.wake_r.fileno():
                    return self.stop()
                index, pid, status = self.reap(fd)
                say(f"worker {index} (pid {pid}) died: {describe(status)}")
        say("every worker has died: stopping")
        return 1

    def stop(self):
        """SIGTERM to every worker; after STOP_GRACE, SIGKILL to any still running."""
        self.epoll.unregister(self.wake_r.fileno())  # level-triggered: it would wake us on
        for index, pid in self.workers.values():
            os.kill(pid, signal.SIGTERM)
        clean = self.wait_for_exits(STOP_GRACE)
        if self.workers:  # too slow: it has had its chance
            for index, pid in self.workers.values():
                os.kill(pid, signal.SIGKILL)
            self.wait_for_exits(STOP_GRACE)  # SIGKILL cannot be refused, not even stopped
            clean = False
        say("every worker stopped cleanly" if clean else "stopped, not every worker cleanly")
        return 0

    def wait_for_exits(self, seconds):
        """Reap workers as they exit, for at most `seconds`; True if all exited with 0."""
        clean = True
        deadline = time.monotonic() + seconds
        while self.workers:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for fd, _ in self.epoll.poll(left):
                index, pid, status = self.reap(fd)
                if status != 0:
                    clean = False
                    say(f"worker {index} (pid {pid}) stopped: {describe(status)}")
        return clean


# -- the program ------------------------------------------------------------------------

def fail(message):
    """A mistake of the user: one clear line, status 2, no traceback."""
    print(f"{sys.argv[0]}: error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_args():
    parser = argparse.ArgumentParser(
        description="Echo server on edge-triggered epoll, in several threads or processes.")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=9008, help="0 takes any free port")
    parser.add_argument("--threads", type=int, default=1, metavar="N",
                        help="threads sharing one epoll instance (default 1)")
    parser.add_argument("--oneshot", action="store_true",
                        help="register clients with EPOLLONESHOT: one thread owns each "
                             "connection until it re-arms it")
    parser.add_argument("--no-lock", action="store_true",
                        help="the broken variant: a thread handed a connection that another "
                             "thread is handling goes ahead instead of waiting")
    parser.add_argument("--processes", type=int, default=0, metavar="N",
                        help="N worker processes under a supervising parent (default: none)")
    parser.add_argument("--exclusive", action="store_true",
                        help="with --processes: register the shared listener with "
                             "EPOLLEXCLUSIVE")
    parser.add_argument("--reuseport", action="store_true",
                        help="with --processes: one SO_REUSEPORT listener per worker")
    parser.add_argument("--work-ms", type=float, default=0.0, metavar="MS",
                        help="milliseconds of waiting (not computing) per KiB read")
    parser.add_argument("--trace", action="store_true",
                        help="print what each thread or worker does")
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
    if not 0 <= args.processes <= 64:
        fail(f"--processes must be between 1 and 64, not {args.processes}")
    if not 0 <= args.work_ms <= 10_000:
        fail("--work-ms must be between 0 and 10000")
    if args.processes and (args.threads > 1 or args.oneshot or args.no_lock):
        fail("--threads/--oneshot/--no-lock and --processes: this lesson shows each on its own")
    if (args.exclusive or args.reuseport) and not args.processes:
        fail("--exclusive and --reuseport need --processes N")
    if args.exclusive and args.reuseport:
        fail("--exclusive or --reuseport, not both: with --reuseport no listener is shared")
    return args


def listen(host, port, reuseport=False):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    # Lets a restarted server bind while old connections linger in TIME_WAIT; it does not
    # let two servers listen on one port (that still fails with EADDRINUSE).
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:  # several sockets on one port, each with its own accept queue
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
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
    first = listen(args.host, args.port, reuseport=args.reuseport)
    address = first.getsockname()[:2]
    if not args.processes:
        run_threads(first, args)
        return
    if args.reuseport:  # one listener per worker, on the port the first one got
        listeners = [first] + [listen(args.host, address[1], reuseport=True)
                               for _ in range(args.processes - 1)]
    else:  # one listener, shared by every worker
        listeners = [first] * args.processes
    supervisor = Supervisor(listeners, args)
    supervisor.start(address)
    sys.exit(supervisor.supervise())


if __name__ == "__main__":
    main()
