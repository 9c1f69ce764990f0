#!/usr/bin/env python3
"""Exercise 10: call_later, the timer heap and the epoll_wait timeout (lesson 10's loop).

Every timer in this loop is a TimerHandle that call_at pushes on a heap; each pass of the
loop sleeps in epoll_wait no longer than the nearest timer, then moves the timers that are
due to the ready queue. The three places marked TODO are that, and asyncio.sleep, wait_for
and every timeout rest on them. Check with `make check` (or
`.venv/bin/python exercises/check.py 10`): it runs timing programs on your loop.
Run it as the echo server it is, beside the lesson (its own port, 9020):

    python3 exercises/10_call_later.py                # listening on 127.0.0.1:9020
    python3 lessons/echo_client.py --port 9020

Lesson 10 itself:

    python3 lessons/10_event_loop.py                  # listening on 127.0.0.1:9010
    python3 lessons/echo_client.py --port 9010
    python3 lessons/10_event_loop.py --loop asyncio   # the same code on asyncio's own loop

asyncio's loop is the loop of lessons 01 to 06 with three more parts. This file builds it in
four stages, each named for its counterpart in asyncio (base_events.py, selector_events.py,
unix_events.py): 1. callbacks: call_soon queues a Handle, one pass runs the queue; 2. timers:
call_later pushes a TimerHandle on a heap, and the nearest one is the epoll_wait timeout;
3. readers and writers: epoll interest whose report is a callback; 4. coroutines: asyncio's
own Future and Task run on those three. A Task is a callback that steps a coroutine; an
await on a Future parks it until a callback sets the result; sock_recv and friends try the
system call and, on EAGAIN, await a Future that a reader completes.

Unmodified asyncio code (sleep, gather, wait_for, Queue, Lock, Event, shield, cancellation)
runs on it, with asyncio.Runner(loop_factory=EpollEventLoop) on Python 3.11+ or
run_until_complete on 3.10; what it does not do (servers, streams, subprocesses, executors)
raises NotImplementedError naming the method. As a script it is an echo server written with
loop.sock_*. Like asyncio's selector loop it is level-triggered: a reader is registered only
while a coroutine waits for it.
"""

import argparse
import asyncio
import collections
import contextvars
import errno
import heapq
import itertools
import logging
import select
import signal
import socket
import sys
import time
import weakref

READABLE = select.EPOLLIN
WRITABLE = select.EPOLLOUT
# Always reported, asked or not, and no verdict: wake both sides; the next recv or send
# says what happened (EOF, reset...).
TROUBLE = select.EPOLLHUP | select.EPOLLERR
MAX_SLEEP = 24 * 3600.0  # epoll_wait takes an int of milliseconds: cap the timeout (a day)


# -- 1. callbacks ---------------------------------------------------------------------------

class Handle:
    """A callback waiting to run, with its arguments and context (asyncio.Handle, events.py)."""

    def __init__(self, callback, args, loop, context=None):
        self._callback, self._args, self._loop = callback, args, loop
        self._context = context if context is not None else contextvars.copy_context()
        self._cancelled = False

    def cancel(self):
        self._cancelled = True  # it stays where it is; the loop skips it

    def cancelled(self):
        return self._cancelled

    def _run(self):
        try:
            self._context.run(self._callback, *self._args)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:  # one broken callback must not stop the loop
            self._loop.call_exception_handler({
                "message": f"Exception in callback {self._callback!r}", "exception": exc,
                "handle": self})


class TimerHandle(Handle):
    """A Handle due at a time of loop.time() (asyncio.TimerHandle)."""

    def __init__(self, when, callback, args, loop, context=None):
        super().__init__(callback, args, loop, context)
        self._when = when

    def when(self):
        return self._when


def _set_result_unless_done(future, result=None):
    """A reader's or a signal's callback: wake whoever awaits `future`, once."""
    if not future.done():
        future.set_result(result)


class EpollEventLoop(asyncio.AbstractEventLoop):

    def __init__(self):
        self._ready = collections.deque()  # Handles to run in this pass (base_events: _ready)
        self._scheduled = []  # heap of (when, sequence, TimerHandle): nearest first
        self._sequence = itertools.count()  # equal times run in the order they were asked
        self._epoll = select.epoll()  # selector_events uses selectors.EpollSelector
        self._readers, self._writers = {}, {}  # fd -> Handle
        self._interest = {}  # fd -> the mask the kernel holds for it
        self._signal_handlers = {}  # signal number -> Handle
        self._asyncgens = weakref.WeakSet()
        self._exception_handler = None
        self._debug = False
        self._running = self._stopping = self._closed = False
        self.trace = False  # print one line per epoll_wait that reported something
        # The self-pipe (unix_events.py, selector_events.py: _make_self_pipe): a signal
        # handler or another thread cannot touch the loop, but a byte written into this
        # socket wakes epoll_wait like a client would.
        self._ssock, self._csock = socket.socketpair()
        self._ssock.setblocking(False)
        self._csock.setblocking(False)
        self.add_reader(self._ssock, self._read_from_self)

    def call_soon(self, callback, *args, context=None):
        self._check_closed()
        handle = Handle(callback, args, self, context)
        self._ready.append(handle)
        return handle

    def call_soon_threadsafe(self, callback, *args, context=None):
        handle = self.call_soon(callback, *args, context=context)
        self._write_to_self()  # the loop may be asleep in epoll_wait: wake it
        return handle

    def run_forever(self):
        self._check_closed()
        self._check_running()
        old_hooks = sys.get_asyncgen_hooks()
        sys.set_asyncgen_hooks(firstiter=self._asyncgens.add,
                               finalizer=self._asyncgen_finalizer)
        self._running = True
        asyncio._set_running_loop(self)  # what asyncio.get_running_loop() returns
        try:
            while not self._stopping:
                self._run_once()
        finally:
            self._stopping = self._running = False
            asyncio._set_running_loop(None)
            sys.set_asyncgen_hooks(*old_hooks)

    def _run_once(self):
        """One pass of the loop (BaseEventLoop._run_once): sleep in epoll_wait no longer
        than the nearest timer, queue what it reported and what is due, run the queue."""
        while self._scheduled and self._scheduled[0][2].cancelled():
            heapq.heappop(self._scheduled)  # a cancelled timer must not cut the sleep short
        if self._ready or self._stopping:
            timeout = 0  # work is waiting: only look
        # TODO: with timers in the heap, sleep only until the nearest one is due:
        # TODO: self._scheduled[0][0] - self.time() seconds, never below 0, at most MAX_SLEEP.
        else:
            timeout = -1  # nothing to do until an fd is ready: sleep as long as it takes
        events = self._epoll.poll(timeout)  # rounds up to whole ms: never wakes early
        if self.trace and events:
            wake_fd = self._ssock.fileno()  # the self-pipe: "signal" (or call_soon_threadsafe)
            print("wake " + " ".join(f"{'signal' if fd == wake_fd else fd}={mask_name(ev)}"
                                     for fd, ev in events), flush=True)
        for fd, ev in events:
            self._process_event(fd, ev)
        now = self.time()
        # TODO: pop every timer that is due (its time <= now) off the heap (heapq.heappop)
        # TODO: and append its handle to self._ready (a cancelled one is skipped there).
        # Only what is queued now: a callback's own call_soon runs in the next pass, after
        # epoll has been asked again, so callbacks cannot starve I/O.
        for _ in range(len(self._ready)):
            handle = self._ready.popleft()
            if not handle.cancelled():
                handle._run()

    def stop(self):
        self._stopping = True  # the current pass finishes, then run_forever returns

    def run_until_complete(self, future):
        self._check_closed()
        self._check_running()
        future = asyncio.ensure_future(future, loop=self)  # a coroutine becomes a Task

        def stop_when_done(_):
            self.stop()
        future.add_done_callback(stop_when_done)
        try:
            self.run_forever()
        finally:
            future.remove_done_callback(stop_when_done)
        if not future.done():
            raise RuntimeError("Event loop stopped before Future completed.")
        return future.result()

    def is_running(self):
        return self._running

    def is_closed(self):
        return self._closed

    def _check_closed(self):
        if self._closed:
            raise RuntimeError("Event loop is closed")

    def _check_running(self):  # one loop per thread: asyncio's rule, and the same words
        if self._running or asyncio._get_running_loop() is not None:
            raise RuntimeError("This event loop is already running")

    def close(self):
        if self._running:
            raise RuntimeError("Cannot close a running event loop")
        if self._closed:
            return
        for signum in list(self._signal_handlers):
            self.remove_signal_handler(signum)
        self.remove_reader(self._ssock)  # unregister before close
        self._closed = True
        self._ready.clear()
        self._scheduled.clear()
        self._epoll.close()
        self._ssock.close()
        self._csock.close()

    # -- 2. timers --------------------------------------------------------------------------

    def time(self):
        return time.monotonic()

    def call_later(self, delay, callback, *args, context=None):
        return self.call_at(self.time() + delay, callback, *args, context=context)

    def call_at(self, when, callback, *args, context=None):
        self._check_closed()
        timer = TimerHandle(when, callback, args, self, context)
        # TODO: push the timer on the heap self._scheduled (heapq.heappush) as the tuple
        # TODO: (when, next(self._sequence), timer): nearest first, equal times in order.
        return timer

    # -- 3. readers and writers -------------------------------------------------------------

    def add_reader(self, fd, callback, *args):
        self._readers[_fileno(fd)] = Handle(callback, args, self)
        self._update_interest(_fileno(fd))

    def remove_reader(self, fd):
        found = self._readers.pop(_fileno(fd), None) is not None
        self._update_interest(_fileno(fd))
        return found

    def add_writer(self, fd, callback, *args):
        self._writers[_fileno(fd)] = Handle(callback, args, self)
        self._update_interest(_fileno(fd))

    def remove_writer(self, fd):
        found = self._writers.pop(_fileno(fd), None) is not None
        self._update_interest(_fileno(fd))
        return found

    def _update_interest(self, fd):
        """The mask follows from who waits; the kernel hears only of a change (selectors)."""
        wanted = (READABLE if fd in self._readers else 0) | (WRITABLE if fd in self._writers else 0)
        current = self._interest.get(fd, 0)
        if wanted == current:
            return
        if not wanted:
            del self._interest[fd]
            try:
                self._epoll.unregister(fd)
            except OSError:  # closed already: closing the file took it off the list
                pass
        elif current:
            self._epoll.modify(fd, wanted)
        else:
            self._epoll.register(fd, wanted)
        if wanted:
            self._interest[fd] = wanted

    def _process_event(self, fd, ev):
        """What epoll reported becomes callbacks in the queue (_process_events)."""
        if ev & (READABLE | TROUBLE) and fd in self._readers:
            self._ready.append(self._readers[fd])
        if ev & (WRITABLE | TROUBLE) and fd in self._writers:
            self._ready.append(self._writers[fd])

    def _write_to_self(self):
        try:
            self._csock.send(b"\0")
        except OSError:  # full or closed: a wake-up is pending anyway
            pass

    def _read_from_self(self):
        # Each byte is a wake-up: 0 from call_soon_threadsafe, or a signal's number.
        try:
            data = self._ssock.recv(4096)
        except BlockingIOError:
            return
        for signum in data:
            if signum in self._signal_handlers:
                self._ready.append(self._signal_handlers[signum])

    def add_signal_handler(self, sig, callback, *args):
        """Run callback in the loop when sig arrives (unix_events.py): Python's C handler
        writes the signal's number into the self-pipe, which wakes epoll_wait; the
        Python-level handler itself does nothing."""
        signal.set_wakeup_fd(self._csock.fileno(), warn_on_full_buffer=False)
        self._signal_handlers[sig] = Handle(callback, args, self)
        signal.signal(sig, lambda *_: None)

    def remove_signal_handler(self, sig):
        if self._signal_handlers.pop(sig, None) is None:
            return False
        signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
        if not self._signal_handlers:
            signal.set_wakeup_fd(-1)
        return True

    # -- 4. coroutines: asyncio's own Future and Task, and the sock_* methods ---------------

    def create_future(self):
        return asyncio.Future(loop=self)

    def create_task(self, coro, *, name=None, context=None):
        self._check_closed()
        if context is None:  # Task(context=...) exists from Python 3.11 on
            return asyncio.Task(coro, loop=self, name=name)
        return asyncio.Task(coro, loop=self, name=name, context=context)

    def _ready_for(self, sock, event):
        """A Future done once sock is ready for `event`: what every sock_* method awaits
        after EAGAIN (selector_events.py). The reader or writer exists only while awaited."""
        fd = sock.fileno()
        add, remove = ((self.add_reader, self.remove_reader) if event == READABLE
                       else (self.add_writer, self.remove_writer))
        future = self.create_future()

        def ready():  # stop watching at once: level-triggered, epoll would report it again
            remove(fd)
            _set_result_unless_done(future)
        add(fd, ready)
        future.add_done_callback(lambda _: remove(fd))  # cancelled: stop watching too
        return future

    async def _retry(self, sock, event, call, *args):
        """Try the system call; on EAGAIN, await readiness and try again."""
        while True:
            try:
                return call(*args)
            except BlockingIOError:
                await self._ready_for(sock, event)

    async def sock_recv(self, sock, nbytes):
        return await self._retry(sock, READABLE, sock.recv, nbytes)

    async def sock_recv_into(self, sock, buf):
        return await self._retry(sock, READABLE, sock.recv_into, buf)

    async def sock_sendall(self, sock, data):
        view, sent = memoryview(data).cast("B"), 0
        while sent < len(view):  # a send may take only part of it
            sent += await self._retry(sock, WRITABLE, sock.send, view[sent:])

    async def sock_accept(self, sock):
        conn, address = await self._retry(sock, READABLE, sock.accept)
        conn.setblocking(False)
        return conn, address

    async def sock_connect(self, sock, address):
        try:
            return sock.connect(address)  # numeric addresses only: no resolver here
        except BlockingIOError:  # EINPROGRESS: the handshake goes on without us
            await self._ready_for(sock, WRITABLE)
        error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            raise OSError(error, f"Connect call failed {address}")

    def _asyncgen_finalizer(self, agen):
        self._asyncgens.discard(agen)
        if not self._closed:
            self.call_soon_threadsafe(self.create_task, agen.aclose())

    async def shutdown_asyncgens(self):
        closing, self._asyncgens = list(self._asyncgens), weakref.WeakSet()
        await asyncio.gather(*(agen.aclose() for agen in closing), return_exceptions=True)

    async def shutdown_default_executor(self, timeout=None):
        pass  # this loop has no executor (run_in_executor is not implemented)

    def get_debug(self):
        return self._debug

    def set_debug(self, enabled):
        self._debug = enabled

    def set_exception_handler(self, handler):
        self._exception_handler = handler

    def get_exception_handler(self):
        return self._exception_handler

    def call_exception_handler(self, context):
        if self._exception_handler is None:
            self.default_exception_handler(context)
        else:
            self._exception_handler(self, context)

    def default_exception_handler(self, context):
        """What nobody could catch (a callback's error, a Task's exception that nobody
        retrieved) goes to asyncio's logger, as BaseEventLoop.default_exception_handler."""
        extra = "".join(f"\n{key}: {value!r}" for key, value in context.items()
                        if key not in ("message", "exception"))
        logging.getLogger("asyncio").error(context.get("message", "Unhandled error") + extra,
                                           exc_info=context.get("exception"))


def _not_implemented(name):
    def method(self, *args, **kwargs):
        raise NotImplementedError(
            f"EpollEventLoop.{name}() is not implemented by this lesson's loop: run this "
            "code on asyncio's own loop (asyncio.run), or write it with loop.sock_*")
    method.__name__ = name
    return method


# Every other method of the abstract loop (create_server, create_connection, streams,
# subprocesses, executors...) says which one is missing instead of a bare error.
for _name in [n for n in vars(asyncio.AbstractEventLoop) if not n.startswith("_")]:
    if _name not in vars(EpollEventLoop):
        setattr(EpollEventLoop, _name, _not_implemented(_name))


def _fileno(fd):
    return fd if isinstance(fd, int) else fd.fileno()


def mask_name(mask):
    names = [name for bit, name in ((READABLE, "IN"), (WRITABLE, "OUT"),
                                    (select.EPOLLHUP, "HUP"), (select.EPOLLERR, "ERR"))
             if mask & bit]
    return "|".join(names) or "-"


def run(main, loop_factory=EpollEventLoop):
    """asyncio.run(main) on our loop: asyncio.Runner on Python 3.11+; by hand on 3.10."""
    if hasattr(asyncio, "Runner"):
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(main)
    loop = loop_factory()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(main)
    finally:
        left = asyncio.all_tasks(loop)
        for task in left:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        asyncio.set_event_loop(None)
        loop.close()


# -- the echo server, written with loop.sock_* -------------------------------------------------

RECV_SIZE = 64 * 1024  # bytes one sock_recv_into may bring in
HIGH_WATER = 1 << 20  # owed bytes at which we stop reading a client until it reads
BACKLOG = 1024
# accept() errors that say "out of file descriptors or memory": not this client's fault.
OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
RETRY_ACCEPT = 1.0  # seconds: while accept is paused, try again this often anyway


class Connection:
    """Everything the server knows about one client, in one place."""

    def __init__(self, sock):
        self.sock = sock
        self.inbox = bytearray(RECV_SIZE)  # each read lands here, reused
        self.outbox = bytearray()  # read, not yet sent back
        self.peer_done = False  # the client sent EOF
        self.changed = asyncio.Condition()  # outbox or peer_done changed


async def read_in(loop, conn):
    """Read the client into its outbox until EOF; pause while HIGH_WATER bytes are owed."""
    while True:
        async with conn.changed:
            await conn.changed.wait_for(lambda: len(conn.outbox) < HIGH_WATER)
        count = await loop.sock_recv_into(conn.sock, conn.inbox)
        async with conn.changed:
            conn.outbox += memoryview(conn.inbox)[:count]
            conn.peer_done = count == 0  # an empty read is EOF
            conn.changed.notify_all()
        if conn.peer_done:
            return


async def send_back(loop, conn):
    """Send the outbox back a piece at a time; finish once EOF came and nothing is owed."""
    while True:
        async with conn.changed:
            await conn.changed.wait_for(lambda: conn.outbox or conn.peer_done)
            if not conn.outbox:
                return  # everything owed is delivered: the half-closed client has it all
            piece = bytes(conn.outbox[:RECV_SIZE])
            del conn.outbox[:len(piece)]  # bytearray drops a prefix in place
            conn.changed.notify_all()
        await loop.sock_sendall(conn.sock, piece)


async def serve_client(loop, sock, fd_freed, log):
    conn = Connection(sock)
    tasks = [loop.create_task(read_in(loop, conn)), loop.create_task(send_back(loop, conn))]
    why = "client finished"
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        errors = [task.exception() for task in done if task.exception()]
        if errors and not isinstance(errors[0], OSError):
            raise errors[0]  # a bug, not a client: let it be seen
        if errors:  # ECONNRESET, EPIPE...: this client is gone, the others go on
            why = errors[0].strerror
    except asyncio.CancelledError:  # Ctrl-C or SIGTERM: serve() cancels every client
        why = "server stopping"
        raise  # cancelled it is: gather() in accept_forever counts on that
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # their readers go first...
        log(f"close fd {sock.fileno()}: {why}")
        sock.close()  # ...then the fd: unregister before close
        fd_freed.set()


async def accept_forever(loop, listener, log):
    fd_freed = asyncio.Event()  # set whenever a connection closes
    clients = set()
    try:
        while True:
            try:
                sock, _ = await loop.sock_accept(listener)
            except ConnectionAbortedError:  # this client gave up while queued: next one
                continue
            except OSError as e:
                # The trap: out of fds, the client stays queued and the listener stays
                # ready, so a level-triggered loop would be woken at once, forever. While
                # we wait here no coroutine awaits the listener: it is not registered at
                # all. A close, or RETRY_ACCEPT (ENFILE is freed elsewhere), lets us retry.
                log(f"accept paused: {e.strerror}")
                fd_freed.clear()
                try:
                    await asyncio.wait_for(fd_freed.wait(), RETRY_ACCEPT)
                except asyncio.TimeoutError:
                    pass
                continue
            log(f"accept fd {sock.fileno()}")
            task = loop.create_task(serve_client(loop, sock, fd_freed, log))
            clients.add(task)  # the loop keeps only weak references to tasks
            task.add_done_callback(clients.discard)
    finally:
        for task in clients:
            task.cancel()
        await asyncio.gather(*clients, return_exceptions=True)


async def serve(listener, trace=False):
    """The server until SIGINT or SIGTERM, on whichever loop runs it."""
    loop = asyncio.get_running_loop()
    stopping = loop.create_future()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, _set_result_unless_done, stopping)
    host, port = listener.getsockname()[:2]  # ready: signals are handled from here on
    print(f"listening on {host}:{port}", flush=True)
    log = (lambda text: print(text, flush=True)) if trace else (lambda text: None)
    accepting = loop.create_task(accept_forever(loop, listener, log))
    await stopping
    accepting.cancel()
    await asyncio.gather(accepting, return_exceptions=True)  # every client closed


# -- the program ------------------------------------------------------------------------

def fail(message):
    """A mistake of the user: one clear line, status 2, no traceback."""
    print(f"{sys.argv[0]}: error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_args():
    parser = argparse.ArgumentParser(description="Echo server on an asyncio loop built on epoll.")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=9020, help="0 takes any free port")
    parser.add_argument("--loop", choices=["epoll", "asyncio"], default="epoll",
                        help="run the same code on this file's loop (default) or asyncio's")
    parser.add_argument("--trace", action="store_true",
                        help="print every accept, close, and wake-up of the loop")
    parser.error = lambda message: fail(f"{message} (see --help)")
    args = parser.parse_args()
    if not 0 <= args.port <= 65535:
        fail(f"--port must be between 0 and 65535, not {args.port}")
    return args


def listen(host, port):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
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
    with listener:
        if args.loop == "asyncio":
            asyncio.run(serve(listener, args.trace))
        else:
            def traced_loop():
                loop = EpollEventLoop()
                loop.trace = args.trace
                return loop
            run(serve(listener, args.trace), loop_factory=traced_loop)


if __name__ == "__main__":
    main()
