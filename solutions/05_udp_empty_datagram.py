#!/usr/bin/env python3
"""Exercise 05: an empty datagram is a message, not the end of anything.

This is lesson 05's UDP echo server with one habit carried over from TCP. Over TCP, a recv
that returns no bytes means the peer has finished sending (EOF). This server reads UDP the
same way: when recvmsg returns 0 bytes, it stops reading. Nothing crashes, and yet a
client that sends an empty datagram never hears back, and neither, for a while, do the
clients whose datagrams were queued behind it. (Notebook 05 shows why 0 bytes is a message.)

Change the lines marked TODO in on_readable so that
  - an empty datagram is echoed to its sender (as an empty datagram), like any other, and
  - the datagrams that arrived after it are echoed at once too. The socket is
    edge-triggered: whatever the drain leaves unread is not reported again until yet another
    datagram happens to arrive.

Check your work with `make check 05` (or `.venv/bin/python exercises/check.py 05`). The
finished version is solutions/05_udp_empty_datagram.py, with the starting point's lines
beside the answer. The exercise listens on a port of its own, 9015, so that it can run
beside the lesson:

    python3 exercises/05_udp_empty_datagram.py --trace       # listening on 127.0.0.1:9015
    python3 lessons/echo_client.py --udp --port 9015 --bytes 0    # an empty datagram: echoed?
"""

import argparse
import errno
import collections
import select
import signal
import socket
import sys

EDGE = select.EPOLLET  # report arrivals (datagrams, freed send space), not levels
READABLE = select.EPOLLIN
WRITABLE = select.EPOLLOUT
# Always reported, asked or not. On a UDP socket EPOLLERR means a pending error (an ICMP
# report); the next recvmsg returns it, once, and the datagrams queued behind it remain.
TROUBLE = select.EPOLLHUP | select.EPOLLERR

# A UDP header's 16-bit length field caps a datagram at 65,535 bytes including the 8-byte
# header; over IPv4 the 20-byte IP header comes off too, leaving 65,507 bytes of payload.
# A buffer of 64 KiB therefore holds any datagram whole, over IPv4 and IPv6 alike.
BUFSIZE = 64 * 1024
HIGH_WATER = 1 << 20  # bytes of replies the kernel has not taken yet at which we stop reading
LOW_WATER = 256 * 1024  # ...and the level at which we read again
# Linux: attach the socket's count of dropped datagrams to each datagram received.
# Python does not name this option; 40 is its number in <asm-generic/socket.h>.
SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40)
DROP_COUNT_SPACE = socket.CMSG_SPACE(4)  # room for that one 32-bit counter


def mask_name(mask):
    names = [name for bit, name in ((READABLE, "IN"), (WRITABLE, "OUT"),
                                    (select.EPOLLHUP, "HUP"), (select.EPOLLERR, "ERR"))
             if mask & bit]
    return "|".join(names) or "-"


def peer_name(address):
    return f"{address[0]}:{address[1]}"


class Endpoint:
    """The one socket every client shares, and the replies it still owes them.

    There is no per-client object: a UDP server knows a client only as the source address
    of the datagram in hand. Keeping state per address would let anyone who sends from many
    addresses grow our memory; the only state here is one bounded queue for all of them.
    """

    def __init__(self, sock):
        self.sock = sock
        self.outbox = collections.deque()  # (reply, address) the kernel has not taken yet
        self.queued = 0  # bytes in outbox
        self.throttled = False  # outbox passed HIGH_WATER: stop reading until LOW_WATER
        self.drops_seen = 0  # the kernel's drop counter, as last reported to us
        self.interest = READABLE  # what epoll watches for now

    def wanted(self):
        """The interest mask this state calls for: derived, never edited by hand."""
        mask = 0
        if not self.throttled:
            mask |= READABLE
        if self.outbox:  # ask for EPOLLOUT only while replies are waiting
            mask |= WRITABLE
        return mask


class UdpEchoServer:
    def __init__(self, sock, trace=False, bufsize=BUFSIZE):
        self.endpoint = Endpoint(sock)
        self.trace = trace
        # One receive buffer, reused for every datagram: recvmsg_into fills it in place.
        self.buffer = bytearray(bufsize)
        self.view = memoryview(self.buffer)
        self.epoll = select.epoll()
        self.epoll.register(sock.fileno(), self.endpoint.interest | EDGE)
        # The self-pipe: a signal handler cannot touch the loop, but Python writes the
        # signal number into this socket, which wakes epoll_wait like any datagram would.
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        signal.set_wakeup_fd(self.wake_w.fileno(), warn_on_full_buffer=False)
        self.epoll.register(self.wake_r.fileno(), READABLE | EDGE)
        self.running = True

    def log(self, text):
        if self.trace:
            print(text, flush=True)

    def report(self, text):
        # Loss and truncation are printed always: the kernel tells nobody else.
        print(text, flush=True)

    # -- the handlers -------------------------------------------------------------------

    def on_readable(self, ep):
        # Drain: receive until EAGAIN. Many datagrams that arrive while we are busy make one
        # edge; whatever is left unread now would wait until some other datagram arrives.
        count = 0
        while not ep.throttled:
            try:
                # MSG_TRUNC as an input flag makes Linux return the datagram's real length
                # even when it did not fit (udp(7)); the flags returned say whether it fit.
                size, ancillary, flags, sender = ep.sock.recvmsg_into(
                    [self.buffer], DROP_COUNT_SPACE, socket.MSG_TRUNC)
            except BlockingIOError:  # drained; the next datagram is a new edge
                break
            except OSError as e:
                # A pending error (say an ICMP report) is returned once and cleared. It
                # belongs to no datagram in the queue, so there is nobody to close: go on.
                self.report(f"receive error: {e.strerror}")
                continue
            # exercise: the starting point has the "#|" lines, not the answer below
            #| # TODO: TCP's habit: an empty read means the peer is done, so stop reading.
            #| # TODO: is that true of a datagram socket? And what of the datagrams behind it?
            #| if not size:  # TODO
            #|     break  # TODO
            # answer:
            # An empty datagram is a message of zero bytes, not EOF: UDP has no end of
            # stream. Echo it like any other, and keep draining: on an edge-triggered
            # socket a datagram left unread now is not reported again until another arrives.
            # end of the answer
            count += 1
            kept = min(size, len(self.buffer))
            if flags & socket.MSG_TRUNC:
                self.report(f"truncated: a {size}-byte datagram from {peer_name(sender)} did "
                            f"not fit the {len(self.buffer)}-byte buffer; only its first "
                            f"{kept} bytes were received, the rest is gone")
            self.note_drops(ep, ancillary)
            self.reply(ep, self.view[:kept], sender)
        self.log(f"drained {count} datagram{'s' if count != 1 else ''}, then "
                 + ("stopped: replies waiting" if ep.throttled else "EAGAIN"))

    def note_drops(self, ep, ancillary):
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_RXQ_OVFL and len(data) >= 4:
                # How many datagrams the kernel had dropped when this one was queued. It
                # only counts up, and reaches us only with a later datagram that got in.
                total = int.from_bytes(data[:4], sys.byteorder)
                if total != ep.drops_seen:
                    self.report(f"dropped: the receive buffer was full; the kernel has "
                                f"discarded {total} datagrams so far")
                    ep.drops_seen = total

    def reply(self, ep, data, address):
        if not ep.outbox:  # nothing queued ahead of it: try to send at once
            try:
                ep.sock.sendto(data, address)
                return
            except BlockingIOError:  # the send buffer is full; queue it below
                pass
            except OSError as e:  # this one reply cannot go (EMSGSIZE, EPERM, ...): drop it
                self.report(f"cannot answer {peer_name(address)}: {e.strerror}")
                return
        ep.outbox.append((bytes(data), address))  # copy: the receive buffer is reused
        ep.queued += len(data)
        if ep.queued >= HIGH_WATER:
            # Stop reading. Datagrams that arrive meanwhile wait in the kernel, or are
            # dropped there when it fills: that is what UDP promises, and our memory stays
            # bounded by HIGH_WATER plus one datagram.
            ep.throttled = True

    def on_writable(self, ep):
        # Drain the other way: send until the queue is empty or the kernel says EAGAIN.
        while ep.outbox:
            data, address = ep.outbox[0]
            try:
                ep.sock.sendto(data, address)  # a datagram goes whole or not at all
            except BlockingIOError:  # full: EPOLLOUT comes once space is freed after this
                break
            except OSError as e:
                self.report(f"cannot answer {peer_name(address)}: {e.strerror}")
            ep.outbox.popleft()
            ep.queued -= len(data)
        if ep.throttled and ep.queued <= LOW_WATER:
            ep.throttled = False
            # Data may have waited in the kernel while we did not read. No edge announces
            # it, but adding EPOLLIN back with epoll_ctl re-checks and reports it.

    def update_interest(self, ep):
        wanted = ep.wanted()
        if wanted != ep.interest:  # one epoll_ctl only when something changed
            self.log(f"interest: {mask_name(ep.interest)} -> {mask_name(wanted)}")
            self.epoll.modify(ep.sock.fileno(), wanted | EDGE)
            ep.interest = wanted

    # -- the loop -----------------------------------------------------------------------

    def serve(self):
        ep = self.endpoint
        sock_fd, wake_fd = ep.sock.fileno(), self.wake_r.fileno()
        while self.running:
            events = self.epoll.poll()  # sleeps in the kernel until something is ready
            self.log("wake " + " ".join(
                f"{'socket' if fd == sock_fd else 'signal'}={mask_name(ev)}"
                for fd, ev in events))
            for fd, ev in events:
                if fd == wake_fd:
                    self.running = False
                elif fd == sock_fd:
                    if ev & (READABLE | TROUBLE):
                        self.on_readable(ep)
                    if ev & (WRITABLE | TROUBLE):
                        self.on_writable(ep)
                    self.update_interest(ep)

    def shutdown(self):
        signal.set_wakeup_fd(-1)
        self.epoll.unregister(self.endpoint.sock.fileno())  # before close, as always
        self.endpoint.sock.close()
        self.epoll.close()
        self.wake_r.close()
        self.wake_w.close()


# -- the program ------------------------------------------------------------------------

def fail(message):
    """A mistake of the user: one clear line, status 2, no traceback."""
    print(f"{sys.argv[0]}: error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_args():
    parser = argparse.ArgumentParser(description="UDP echo server on edge-triggered epoll.")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=9015, help="0 takes any free port")
    parser.add_argument("--trace", action="store_true",
                        help="print every wake-up, every drain and every interest change")
    parser.add_argument("--bufsize", type=int, default=BUFSIZE, metavar="N",
                        help=f"receive buffer per datagram (default {BUFSIZE}, enough for "
                             "any); a smaller one cuts larger datagrams short")
    parser.error = lambda message: fail(f"{message} (see --help)")
    args = parser.parse_args()
    if not 0 <= args.port <= 65535:
        fail(f"--port must be between 0 and 65535, not {args.port}")
    if not 1 <= args.bufsize <= BUFSIZE:
        fail(f"--bufsize must be between 1 and {BUFSIZE}, not {args.bufsize}")
    return args


def bind(host, port):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    # No SO_REUSEADDR: on UDP it would let a second server share the port silently.
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        hint = " (is another server using it? try --port 0)" if e.errno == errno.EADDRINUSE else ""
        fail(f"cannot bind UDP {host}:{port}: {e.strerror}{hint}")
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
    return sock


def main():
    args = parse_args()
    if not hasattr(select, "epoll"):
        fail(f"epoll exists only on Linux, and this is {sys.platform}; "
             "use a Linux machine, VM, WSL2 or container")
    sock = bind(args.host, args.port)
    server = UdpEchoServer(sock, trace=args.trace, bufsize=args.bufsize)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: None)  # the wake-up fd does the work
    host, port = sock.getsockname()[:2]
    print(f"listening on {host}:{port}", flush=True)
    try:
        server.serve()
    finally:
        server.shutdown()


if __name__ == "__main__":
    main()
