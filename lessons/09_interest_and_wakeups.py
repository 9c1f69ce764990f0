#!/usr/bin/env python3
"""Lesson 09: the interest list's fine print, and waking a loop.

Not a server: a handful of short demonstrations, one per sub-command, each of which does one
thing to a real epoll instance and says in plain sentences what the kernel did.

    python3 lessons/09_interest_and_wakeups.py --help        # the list of demonstrations
    python3 lessons/09_interest_and_wakeups.py dup-close     # events for a closed fd number
    python3 lessons/09_interest_and_wakeups.py wake          # waking a sleeping loop, measured

What epoll remembers (epoll(7), epoll_ctl(2)): an entry of the interest list belongs to a
file descriptor number AND the open file description behind it (the kernel's "struct file",
which dup() and fork() share). The entry lives as long as that open file description, not as
long as the number: close one number while a duplicate is open and the entry stays, still
labelled with the closed number. Every lesson therefore unregisters before it closes.

How anything other than a socket wakes a loop asleep in epoll_wait: something it watches must
become readable. Another thread writes to an eventfd (eventfd(2)) or a pipe; a signal handler
makes Python write the signal's number into the fd given to signal.set_wakeup_fd (lessons 01
to 05 stop that way); a timer is either a timerfd (timerfd_create(2)) or, as lesson 04 does,
the epoll_wait timeout taken from the nearest deadline.
"""

import argparse
import ctypes
import errno
import fcntl
import heapq
import json
import os
import select
import signal
import socket
import struct
import sys
import tempfile
import termios
import threading
import time

READABLE = select.EPOLLIN
WRITABLE = select.EPOLLOUT
EDGE = select.EPOLLET
PEER_SHUT_WRITE = select.EPOLLRDHUP  # only reported when asked for
# The kernel adds these two to every entry, asked or not (the "events" of /proc's fdinfo
# show them), and reports them whenever they hold.
TROUBLE = select.EPOLLHUP | select.EPOLLERR

MASK_NAMES = ((select.EPOLLIN, "IN"), (select.EPOLLOUT, "OUT"), (select.EPOLLRDHUP, "RDHUP"),
              (select.EPOLLERR, "ERR"), (select.EPOLLHUP, "HUP"), (select.EPOLLET, "ET"),
              (select.EPOLLONESHOT, "ONESHOT"))
QUIET = 0.3  # seconds of silence after which "no event came" is the answer
BOUND = 5.0  # no wait in this file lasts longer than this
TICK = 0.2  # the timeout of the loop that has no way to be woken, in the wake demo


def mask_name(mask):
    return "|".join(name for bit, name in MASK_NAMES if mask & bit) or "nothing"


def say(text=""):
    print(text, flush=True)


def socket_pair():
    """Two connected sockets: writing on one makes the other readable, no network needed."""
    return socket.socketpair()


def wait_for(predicate, what, bound=BOUND):
    """Poll a condition every millisecond, for at most `bound` seconds."""
    deadline = time.monotonic() + bound
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {bound:g} s")
        time.sleep(0.001)


def asleep_in_epoll_wait(tid):
    """True while thread `tid` of this process (or process `tid`) sleeps in epoll_wait:
    /proc names the kernel function a sleeping task waits in (do_epoll_wait, ep_poll)."""
    for path in (f"/proc/self/task/{tid}/wchan", f"/proc/{tid}/wchan"):
        try:
            with open(path) as f:
                where = f.read()
        except OSError:
            continue
        return "epoll" in where or "ep_poll" in where
    return False


# -- the kernel's own view of an interest list ---------------------------------------------

def interest_list(epoll):
    """The interest list as the kernel holds it: /proc/self/fdinfo/EPFD has one "tfd:" line
    per entry, with the fd number it was added under, its event mask (hex) and the inode of
    the file it watches. Returns [(fd number, mask, inode)]."""
    entries = []
    with open(f"/proc/self/fdinfo/{epoll.fileno()}") as f:
        for line in f:
            if line.startswith("tfd:"):
                fields = line.split()
                ino = next(int(x[4:], 16) for x in fields if x.startswith("ino:"))
                entries.append((int(fields[1]), int(fields[3], 16), ino))
    return entries


def show_interest_list(epoll, names, title):
    """Print the interest list, naming each watched file by its inode (`names`: inode -> name)."""
    order = list(names)  # the kernel lists entries in an order of its own; ours is stable
    entries = sorted(interest_list(epoll),
                     key=lambda e: (order.index(e[2]) if e[2] in order else len(order), e[0]))
    say(f"{title}: {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}")
    for fd, mask, ino in entries:
        say(f"  fd {fd} watches {names.get(ino, 'a file not named here')}, "
            f"events {mask_name(mask)} (0x{mask:x})")
    return entries


def inode(fd):
    return os.fstat(fd).st_ino


# -- dup-close --------------------------------------------------------------------------------

def demo_dup_close(args):
    say("An entry belongs to an fd number and the open file behind it; what if the number is "
        "closed while a duplicate keeps the file open?")
    ep = select.epoll()
    old, old_peer = socket_pair()
    ep.register(old.fileno(), READABLE)
    number = old.fileno()
    names = {inode(number): "the old socket"}
    duplicate = os.dup(number)  # e.g. a copy handed to a helper, or inherited by a child
    old.close()  # the mistake: close without unregister
    say(f"registered fd {number}, made a duplicate, closed fd {number} without unregistering")
    old_peer.send(b"x")
    events = ep.poll(QUIET)
    say(f"the peer wrote one byte: epoll reported {describe(events)}")
    say(f"  fd {number} is closed, yet its entry lives on: the duplicate keeps the file open")
    try:
        ep.unregister(number)
        say("unregister of the closed number: succeeded")
    except OSError as e:
        say(f"unregister of the closed number: {errno.errorcode[e.errno]} ({e.strerror}); "
            "nothing names that entry any more")

    new, new_peer = socket_pair()
    if new.fileno() != number:  # the lowest free number is taken; make sure it is ours
        os.dup2(new.fileno(), number)
        new.close()
        new = socket.socket(fileno=number)
    names[inode(number)] = "the new socket"
    say(f"a new socket got the same number, fd {number} (the lowest free one)")
    try:
        ep.register(number, READABLE)
        say("registering it: accepted, because its open file is another one "
            "(the kernel looks entries up by number and file together)")
    except FileExistsError:
        say("registering it: EEXIST (File exists)")
    show_interest_list(ep, names, "the kernel's interest list now")
    new_peer.send(b"y")
    old_peer.send(b"z")
    events = ep.poll(QUIET)
    say(f"both peers wrote: epoll reported {describe(events)}: two reports, one number, "
        "and no way to tell which is which")
    ep.unregister(number)
    say(f"unregister of fd {number} removed the entry of the file fd {number} means NOW "
        "(the new socket):")
    show_interest_list(ep, names, "  left")
    os.close(duplicate)
    left = interest_list(ep)
    say(f"closing the last duplicate released the old file, and the kernel dropped its entry: "
        f"{len(left)} entries left")

    say("")
    say("The fix, as every lesson does it: unregister first, then close.")
    fixed, fixed_peer = socket_pair()
    ep.register(fixed.fileno(), READABLE)
    duplicate = os.dup(fixed.fileno())
    ep.unregister(fixed.fileno())
    fixed.close()
    fixed_peer.send(b"x")
    events = ep.poll(QUIET)
    say(f"registered, made a duplicate, unregistered, closed; the peer wrote: epoll reported "
        f"{describe(events)}, and {len(interest_list(ep))} entries remain")
    os.close(duplicate)
    for sock in (old_peer, new, new_peer, fixed_peer):
        sock.close()
    ep.close()


def describe(events):
    if not events:
        return f"nothing within {QUIET:g} s"
    return ", ".join(f"fd {fd} {mask_name(mask)}" for fd, mask in events)


# -- fdinfo -----------------------------------------------------------------------------------

def demo_fdinfo(args):
    say("/proc/PID/fdinfo/EPFD (PID: a process, EPFD: its epoll fd) lists the interest list "
        "as the kernel holds it")
    ep = select.epoll()
    a, a_peer = socket_pair()
    b, b_peer = socket_pair()
    names = {inode(a.fileno()): "socket a", inode(b.fileno()): "socket b"}
    show_interest_list(ep, names, "a new epoll instance")
    ep.register(a.fileno(), READABLE)
    ep.register(b.fileno(), READABLE | WRITABLE | EDGE)
    show_interest_list(ep, names, "after register(a, IN) and register(b, IN|OUT|ET)")
    say("  (the kernel added ERR and HUP to both: they are always reported)")
    ep.modify(b.fileno(), READABLE)
    show_interest_list(ep, names, "after modify(b, IN)")
    ep.unregister(a.fileno())
    show_interest_list(ep, names, "after unregister(a)")
    duplicate = os.dup(b.fileno())
    b.close()
    show_interest_list(ep, names, "after dup(b) and close(b), with no unregister")
    say("  the entry is still there, under a number that is closed")
    os.close(duplicate)
    show_interest_list(ep, names, "after closing the duplicate as well")
    for sock in (a, a_peer, b_peer):
        sock.close()
    ep.close()


# -- fork -------------------------------------------------------------------------------------

def demo_fork(args):
    say("After fork the child has the same epoll instance (not a copy) and the same sockets.")
    for mode, flags in (("edge-triggered", READABLE | EDGE), ("level-triggered", READABLE)):
        woke = fork_race(flags)
        who = [name for name, got in woke.items() if got]
        say(f"{mode}: the child asleep in epoll_wait on it, then the parent too; one byte "
            f"arrives: {' and '.join(who) or 'nobody'} woke with the event"
            + (f", the {', '.join(n for n in woke if not woke[n])} slept on" if len(who) == 1 else ""))

    ep = select.epoll()
    a, a_peer = socket_pair()
    ep.register(a.fileno(), READABLE | EDGE)
    a_peer.send(b"x")
    child = run_child(lambda: ep.poll(0))
    parent = ep.poll(0)
    say(f"edge-triggered, one arrival, the child calls epoll_wait first: the child got "
        f"{mask_name(child[0][1]) if child else 'nothing'}, then the parent got "
        f"{mask_name(parent[0][1]) if parent else 'nothing'}: one ready list, shared")

    def child_closes_and_reports():
        a.close()  # the child's copy only: the parent's keeps the file open
        return interest_list(ep)
    entries = run_child(child_closes_and_reports)
    say(f"the child closed its copy of the socket without unregistering: its view of the "
        f"interest list still has {len(entries)} entry, and so has the parent's "
        f"({len(interest_list(ep))})")

    def child_unregisters():
        ep.unregister(a.fileno())
        return []
    run_child(child_unregisters)
    say(f"the child unregistered it instead: the parent's interest list now has "
        f"{len(interest_list(ep))} entries (the child changed the parent's loop)")
    for sock in (a, a_peer):
        sock.close()
    ep.close()


def run_child(work):
    """fork; the child runs work() and sends back its result (JSON); the parent waits."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: it must never return into the parent's code
        try:
            os.write(w, json.dumps(work()).encode())
        finally:
            os._exit(0)  # no atexit, no finally blocks of the parent's, no flushing twice
    os.close(w)
    with os.fdopen(r, "rb") as reader:
        result = reader.read()
    os.waitpid(pid, 0)
    return json.loads(result)


def fork_race(flags):
    """Parent and child wait on the shared instance; one arrival: who wakes with it?

    What decides it is in the kernel (fs/eventpoll.c): each epoll_wait sleeps on the
    instance's own wait queue as an "exclusive" waiter, put at the head, so one arrival wakes
    one sleeper, the one that went to sleep last. A level-triggered item goes back on the
    ready list when it is handed out, so the kernel, finding the list not empty, wakes the
    next sleeper as well. The child goes to sleep first and the parent second, every run.
    """
    ep = select.epoll()
    a, a_peer = socket_pair()
    ep.register(a.fileno(), flags)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(w, b"1" if ep.poll(BOUND) else b"0")
        finally:
            os._exit(0)
    os.close(w)
    wait_for(lambda: asleep_in_epoll_wait(pid), "the child asleep in epoll_wait")
    me = threading.get_native_id()

    def arrive():  # once the parent sleeps too
        wait_for(lambda: asleep_in_epoll_wait(me), "the parent asleep in epoll_wait")
        a_peer.send(b"x")
    sender = threading.Thread(target=arrive)
    sender.start()
    parent = bool(ep.poll(BOUND))
    sender.join()
    # The arrival is over; a child that has not answered within QUIET slept through it.
    child = bool(select.select([r], [], [], QUIET)[0]) and os.read(r, 1) == b"1"
    if not child:
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    os.close(r)
    for sock in (a, a_peer):
        sock.close()
    ep.close()
    return {"child": child, "parent": parent}


# -- errors -----------------------------------------------------------------------------------

def demo_errors(args):
    say("What epoll_ctl refuses, and the exception Python raises for each (epoll_ctl(2)):")
    ep = select.epoll()
    a, a_peer = socket_pair()
    with tempfile.TemporaryFile() as regular:
        ep.register(a.fileno(), READABLE)
        other = select.epoll()
        other.register(ep.fileno(), READABLE)
        directory = os.open(".", os.O_RDONLY)
        closed_number = os.dup(a.fileno())  # a number that is free once closed
        os.close(closed_number)
        cases = [
            ("register a socket already registered", lambda: ep.register(a.fileno(), READABLE)),
            ("modify a socket never registered", lambda: ep.modify(a_peer.fileno(), READABLE)),
            ("unregister a socket never registered", lambda: ep.unregister(a_peer.fileno())),
            ("register a regular file", lambda: ep.register(regular.fileno(), READABLE)),
            ("register a directory", lambda: ep.register(directory, READABLE)),
            ("register a closed fd number", lambda: ep.register(closed_number, READABLE)),
            ("register an epoll instance in itself", lambda: ep.register(ep.fileno(), READABLE)),
            ("register A in B when B is already in A", lambda: ep.register(other.fileno(), READABLE)),
        ]
        for what, call in cases:
            try:
                call()
                say(f"  {what}: accepted")
            except OSError as e:
                say(f"  {what}: {errno.errorcode[e.errno]}, {type(e).__name__}")
        os.close(directory)
        other.close()
        say("A regular file is always ready to read and write, so there is nothing to wait "
            "for: epoll refuses it (EPERM) where select and poll just report it ready.")
        ready = select.select([regular], [regular], [], 0)
        say(f"  select() on a regular file: ready at once ({ready[0] == ready[1] == [regular]})")
    a.close()
    a_peer.close()
    ep.close()


# -- nested -----------------------------------------------------------------------------------

def demo_nested(args):
    say("An epoll fd is itself pollable: it is readable while its own ready list is not empty.")
    inner, outer = select.epoll(), select.epoll()
    a, a_peer = socket_pair()
    inner.register(a.fileno(), READABLE)
    outer.register(inner.fileno(), READABLE)
    say(f"inner watches a socket; outer watches inner. Nothing sent: outer reports "
        f"{describe_named(outer.poll(0), {inner.fileno(): 'inner'})}")
    a_peer.send(b"x")
    got = outer.poll(QUIET)
    say(f"the peer wrote: outer reports {describe_named(got, {inner.fileno(): 'inner'})}")
    inside = inner.poll(0)
    say(f"  only inner.poll() says what: {describe_named(inside, {a.fileno(): 'the socket'})}")
    a.recv(1)
    say(f"the byte read: outer reports {describe_named(outer.poll(0), {inner.fileno(): 'inner'})}")
    say("So a library with its own epoll loop can sit inside yours as one fd.")
    for thing in (a, a_peer, inner, outer):
        thing.close()


def describe_named(events, names):
    if not events:
        return "nothing"
    return ", ".join(f"{names.get(fd, 'fd %d' % fd)} {mask_name(mask)}" for fd, mask in events)


# -- rdhup ------------------------------------------------------------------------------------

def demo_rdhup(args):
    listener = listen(args.host, args.port)
    host, port = listener.getsockname()[:2]
    say(f"listening on {host}:{port}")
    ep = select.epoll()
    for asked in (READABLE | PEER_SHUT_WRITE, READABLE):
        client = socket.create_connection((host, port), timeout=BOUND)
        conn, _ = listener.accept()
        conn.setblocking(False)
        ep.register(conn.fileno(), asked)
        client.sendall(b"bye")
        client.shutdown(socket.SHUT_WR)  # a half-close: it sends no more, it still reads
        say(f"registered for {mask_name(asked)}; the client sent 3 bytes, then shut down "
            "its writing side")
        if asked & PEER_SHUT_WRITE:
            # No read at all: the report itself says the peer has finished sending.
            events = poll_until(ep, conn.fileno(), PEER_SHUT_WRITE)
            unread = unread_bytes(conn)
            say(f"  epoll_wait reported {mask_name(events)}: the peer is done sending, known "
                f"after 0 recv calls ({unread} bytes still unread)")
        else:
            # The only sign of the peer's EOF is a recv that returns b"", after the data.
            calls, first = 0, poll_until(ep, conn.fileno(), READABLE | TROUBLE)
            while True:
                if calls:
                    poll_until(ep, conn.fileno(), READABLE | TROUBLE)
                calls += 1
                if not conn.recv(1024):
                    break
            say(f"  epoll_wait reported {mask_name(first)}; EOF was known only when recv "
                f"returned b'', after {calls} recv calls")
        conn.sendall(b"ok")  # after a half-close the other direction still works
        reply = client.recv(16)
        say(f"  the server may still answer a half-closed client: it received {reply!r}")
        ep.unregister(conn.fileno())
        conn.close()
        client.close()
    ep.close()
    listener.close()


def unread_bytes(sock):
    """Bytes waiting in the socket's receive queue, counted by the kernel (FIONREAD), unread."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4))[0]


def poll_until(ep, fd, wanted):
    """The mask of the next report for fd that has a bit of `wanted` (bounded)."""
    deadline = time.monotonic() + BOUND
    while time.monotonic() < deadline:
        for got_fd, mask in ep.poll(BOUND):
            if got_fd == fd and mask & wanted:
                return mask
    raise TimeoutError(f"no report for fd {fd} within {BOUND:g} s")


# -- wake -------------------------------------------------------------------------------------

def demo_wake(args):
    say(f"A loop asleep in epoll_wait; another thread hands it work while it sleeps. How long "
        f"does the work wait? (median of {args.rounds} rounds)")
    for way in args.ways:
        delays, handler_delays = zip(*(one_wake(way) for _ in range(args.rounds)))
        say(f"  {WAYS[way]}: {median(delays) * 1000:.2f} ms")
        if way == "signal":
            say(f"    (its handler ran after {median(handler_delays) * 1000:.2f} ms, but Python "
                "then put epoll_wait back to sleep: PEP 475 retries it)")
    say(f"Without a way to be woken, work waits for the loop's next timeout ({TICK * 1000:.0f} "
        "ms here; with timeout -1, forever).")
    coalesced()


WAYS = {
    "none": "nothing wakes it",
    "eventfd": "eventfd, written by the thread",
    "pipe": "a self-pipe, written by the thread",
    "signal": "a signal, handler only (no set_wakeup_fd)",
    "wakeup-fd": "a signal, with signal.set_wakeup_fd",
}


def one_wake(way):
    """The time from "work queued" to "the loop ran it", for one way of waking the loop.

    The loop runs in the main thread (Python runs signal handlers only there) with a timeout
    of TICK; a helper thread queues the work once the loop sleeps in epoll_wait."""
    ep = select.epoll()
    queue, handled = [], []
    r = w = None
    if way == "eventfd":
        r = w = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    elif way in ("pipe", "wakeup-fd"):
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
    if r is not None:
        ep.register(r, READABLE)
    if way in ("signal", "wakeup-fd"):
        previous = signal.signal(signal.SIGUSR1, lambda *_: handled.append(time.monotonic()))
    if way == "wakeup-fd":
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    loop_thread = threading.get_native_id()
    main = threading.main_thread().ident

    def hand_over():
        wait_for(lambda: asleep_in_epoll_wait(loop_thread), "the loop asleep in epoll_wait")
        queue.append(time.monotonic())
        if way == "eventfd":
            os.eventfd_write(w, 1)
        elif way == "pipe":
            os.write(w, b"\0")
        elif way in ("signal", "wakeup-fd"):
            signal.pthread_kill(main, signal.SIGUSR1)
    helper = threading.Thread(target=hand_over)
    helper.start()
    try:
        while not queue:
            ep.poll(TICK)  # the loop's turn: sleep until an fd is ready or TICK passes
            if r is not None:
                drain(r)
        delay = time.monotonic() - queue[0]
        handler_delay = handled[0] - queue[0] if handled else None
    finally:
        helper.join()
        if way == "wakeup-fd":
            signal.set_wakeup_fd(-1)
        if way in ("signal", "wakeup-fd"):
            signal.signal(signal.SIGUSR1, previous)
        for fd in {r, w} - {None}:
            os.close(fd)
        ep.close()
    return delay, handler_delay


def drain(fd):
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def coalesced():
    efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    for _ in range(3):
        os.eventfd_write(efd, 1)
    total = os.eventfd_read(efd)
    say(f"Three eventfd writes before the loop reads: one read returns {total} (the counter "
        "adds up, and reading sets it back to 0) and then the eventfd is not readable: "
        f"{not select.select([efd], [], [], 0)[0]}")
    r, w = os.pipe()
    os.set_blocking(r, False)
    for _ in range(3):
        os.write(w, b"\0")
    say(f"Three writes to a self-pipe: {len(os.read(r, 4096))} bytes to read, one per write "
        "(pipe(7): a full pipe blocks its writer, unless that end is non-blocking)")
    try:
        signal.set_wakeup_fd(w)
    except ValueError as e:
        say(f"signal.set_wakeup_fd refuses the pipe while its writing end blocks: {e}")
    os.set_blocking(w, False)  # a signal handler must never block
    signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    previous = signal.signal(signal.SIGUSR1, lambda *_: None)
    try:
        signal.raise_signal(signal.SIGUSR1)
        byte = os.read(r, 16)
    finally:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGUSR1, previous)
    say(f"signal.set_wakeup_fd: a SIGUSR1 wrote the byte {list(byte)} into the pipe, the "
        f"signal's number ({int(signal.SIGUSR1)}): one fd can tell several signals apart")
    for fd in (efd, r, w):
        os.close(fd)


def median(values):
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


# -- timers -----------------------------------------------------------------------------------

CLOCK_MONOTONIC = 1  # <time.h>, for the ctypes fallback
TFD_NONBLOCK, TFD_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC  # <sys/timerfd.h> uses the same bits


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def timerfd_create():
    """A timer that is an fd: readable once it has expired (timerfd_create(2))."""
    if hasattr(os, "timerfd_create"):  # Python 3.13 and later
        return os.timerfd_create(time.CLOCK_MONOTONIC, flags=os.TFD_NONBLOCK | os.TFD_CLOEXEC)
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC)
    if fd < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return fd


def timerfd_settime(fd, initial, interval):
    """Arm the timer: first expiry after `initial` seconds, then every `interval` (0: once)."""
    if hasattr(os, "timerfd_settime"):
        os.timerfd_settime(fd, initial=initial, interval=interval)
        return

    def spec(seconds):
        return _Timespec(int(seconds), int(round((seconds % 1) * 1e9)))
    libc = ctypes.CDLL(None, use_errno=True)
    new = _Itimerspec(spec(interval), spec(initial))
    if libc.timerfd_settime(fd, 0, ctypes.byref(new), None) < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))


def expirations(fd):
    """Read the timer: how many times it expired since the last read (an 8-byte count)."""
    return int.from_bytes(os.read(fd, 8), sys.byteorder)


def demo_timers(args):
    period, ticks = args.period, args.ticks
    how = "os.timerfd_create" if hasattr(os, "timerfd_create") else "timerfd_create via ctypes"
    say(f"Two ways to run code every {period * 1000:g} ms in an epoll loop, {ticks} times each.")
    late = timerfd_loop(period, ticks)
    say(f"timerfd ({how}), an fd in the interest list: late by {describe_lateness(late)}")
    late = deadline_loop(period, ticks)
    say(f"deadlines, epoll_wait's timeout taken from the nearest one: late by "
        f"{describe_lateness(late)}")
    say("Neither ever fires early; epoll_wait's timeout counts whole milliseconds, a timerfd "
        "nanoseconds.")

    fd = timerfd_create()
    armed = time.monotonic()
    timerfd_settime(fd, period, period)
    busy_until = armed + 3.5 * period
    while time.monotonic() < busy_until:  # the loop is busy elsewhere, reading nothing
        pass
    missed = expirations(fd)
    passed = (time.monotonic() - armed) / period
    say(f"A loop busy for {3.5 * period * 1000:g} ms reads the timerfd once: {missed} "
        f"expirations counted in one read, none lost ({passed:.1f} periods had passed)")
    os.close(fd)


def describe_lateness(late):
    return (f"{median(late) * 1000:.2f} ms (median), {max(late) * 1000:.2f} ms at most, "
            f"{min(late) * 1000:.2f} ms at least")


def timerfd_loop(period, ticks):
    ep = select.epoll()
    fd = timerfd_create()
    ep.register(fd, READABLE)
    start = time.monotonic()
    timerfd_settime(fd, period, period)
    late, count = [], 0
    while count < ticks:
        for _, _ in ep.poll(BOUND):
            now = time.monotonic()
            count += expirations(fd)
            late.append(now - (start + count * period))
    ep.close()
    os.close(fd)
    return late


def deadline_loop(period, ticks):
    ep = select.epoll()
    start = time.monotonic()
    timers = [(start + period, 1)]  # a heap of (deadline, which tick)
    late = []
    while timers:
        timeout = max(0.0, timers[0][0] - time.monotonic())
        ep.poll(timeout)  # no fd ready: this returns when the nearest deadline comes
        now = time.monotonic()
        while timers and timers[0][0] <= now:  # a wake before a deadline runs nothing
            deadline, tick = heapq.heappop(timers)
            late.append(now - deadline)
            if tick < ticks:
                heapq.heappush(timers, (start + (tick + 1) * period, tick + 1))
    ep.close()
    return late


# -- the program ------------------------------------------------------------------------------

def fail(message):
    """A mistake of the user: one clear line, status 2, no traceback."""
    print(f"{sys.argv[0]}: error: {message}", file=sys.stderr)
    sys.exit(2)


def listen(host, port):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
        listener.listen(16)
    except OSError as e:
        listener.close()
        busy = e.errno == errno.EADDRINUSE
        hint = " (is another program using it? try --port 0)" if busy else ""
        fail(f"cannot listen on {host}:{port}: {e.strerror}{hint}")
    return listener


DEMOS = {
    "dup-close": (demo_dup_close, "close a registered fd while a dup lives: events for a "
                                  "closed number, EBADF, a reused number, the fix"),
    "fdinfo": (demo_fdinfo, "the interest list as the kernel holds it, before and after"),
    "fork": (demo_fork, "parent and child share one epoll instance: who gets the events"),
    "errors": (demo_errors, "EEXIST, ENOENT, EPERM (a regular file), EBADF, EINVAL, ELOOP"),
    "nested": (demo_nested, "an epoll fd inside another epoll set"),
    "rdhup": (demo_rdhup, "EPOLLRDHUP: a peer's half-close without a read, against recv() == b''"),
    "wake": (demo_wake, "wake a sleeping loop from another thread: eventfd, self-pipe, "
                        "signals; measured"),
    "timers": (demo_timers, "timerfd against the timeout from the nearest deadline; measured"),
}


def positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
        return value
    return parse


def parse_args():
    parser = argparse.ArgumentParser(
        description="Lesson 09: the interest list's fine print, and waking a loop. "
                    "Each sub-command shows one thing and says what it saw.")
    network = argparse.ArgumentParser(add_help=False)
    network.add_argument("--host", default="127.0.0.1",
                         help="address to listen on (default 127.0.0.1: this machine only)")
    network.add_argument("--port", type=int, default=9009, help="0 takes any free port")
    # The one line a wrong or missing demonstration gets: which exist, and how to run one.
    # A flag first (`--port 9009`) makes its value look like the demonstration's name.
    listens = f"python3 {sys.argv[0]} rdhup --port {network.get_default('port')}"
    how = (f"choose one of {', '.join(DEMOS)} and name it first: python3 {sys.argv[0]} DEMO, "
           f"e.g. {listens} (rdhup is the one that listens; see --help)")

    def mistake(message):
        if message.startswith("argument DEMO:"):  # argparse's "invalid choice"
            given = next((arg for arg in sys.argv[1:] if not arg.startswith("-")), "")
            fail(f"{given!r} is not a demonstration; {how}")
        flags = {word.partition("=")[0] for word in message.split()}
        if message.startswith("unrecognized arguments") and flags & {"--port", "--host"}:
            fail(f"{message}: only rdhup listens, e.g. {listens} (see --help)")
        fail(f"{message} (see --help)")

    parser.error = mistake
    demos = parser.add_subparsers(dest="demo", metavar="DEMO", title="demonstrations")
    for name, (_, summary) in DEMOS.items():
        sub = demos.add_parser(name, help=summary, description=summary,
                               parents=[network] if name == "rdhup" else [])
        sub.error = parser.error
        if name == "wake":
            sub.add_argument("--rounds", type=positive(int), default=3,
                             help="rounds per way, the median is shown (default 3)")
            sub.add_argument("--ways", nargs="+", choices=list(WAYS), default=list(WAYS),
                             help="which ways to measure (default: all)")
        if name == "timers":
            sub.add_argument("--period", type=positive(float), default=0.02, metavar="S",
                             help="seconds between ticks (default 0.02)")
            sub.add_argument("--ticks", type=positive(int), default=10,
                             help="ticks per way (default 10)")
    args = parser.parse_args()
    if args.demo is None:
        fail(f"no demonstration given; {how}")
    if args.demo == "rdhup" and not 0 <= args.port <= 65535:
        fail(f"--port must be between 0 and 65535, not {args.port}")
    return args


def main():
    args = parse_args()
    if not hasattr(select, "epoll"):
        fail(f"epoll exists only on Linux, and this is {sys.platform}; "
             "use a Linux machine, VM, WSL2 or container")
    try:
        DEMOS[args.demo][0](args)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
