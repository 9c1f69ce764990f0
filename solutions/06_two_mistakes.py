#!/usr/bin/env python3
"""Exercise 06: a tutorial-style echo server with two of the tutorials' mistakes left in.

Lesson 06 ran each mistake of the classic epoll tutorials with the client that exposes it.
This server is in their shape (level-triggered, one recv per event), and two of those
mistakes are still in it, each at a line marked TODO. Find them, fix them, and check with
`make check 06` (or `.venv/bin/python exercises/check.py 06`). The check runs lesson 06's
clients against your server and names each mistake it still sees.

The exercise listens on a port of its own, 9016, so that it can run beside the lesson:

    python3 exercises/06_two_mistakes.py               # listening on 127.0.0.1:9016
    python3 lessons/echo_client.py --port 9016         # in another terminal
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
TROUBLE = select.EPOLLHUP | select.EPOLLERR  # reported unasked; recv or send says what it was
RECV_SIZE = 64 * 1024
HIGH_WATER = 1 << 20  # unsent bytes at which we stop reading from that client...
LOW_WATER = 256 * 1024  # ...and the level at which we read from it again
BACKLOG = 1024
OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
RETRY_ACCEPT = 1.0  # seconds: while accept is paused, try again this often anyway


class Stop(Exception):
    """SIGINT or SIGTERM arrived."""


class Connection:
    def __init__(self, sock):
        self.sock = sock
        self.outbox = bytearray()  # bytes owed to the client that the kernel has not taken
        self.peer_done = False  # the client sent EOF
        self.throttled = False
        self.interest = READABLE
        self.closed = False

    def wanted(self):
        mask = 0 if self.peer_done or self.throttled else READABLE
        return mask | (WRITABLE if self.outbox else 0)


class Server:
    def __init__(self, listener):
        self.listener = listener
        self.conns = {}  # fd -> Connection
        self.epoll = select.epoll()
        self.epoll.register(listener.fileno(), READABLE)
        self.accept_paused = False
        self.retry_accept_at = 0.0

    def on_accept(self):
        try:
            sock, _ = self.listener.accept()
        except BlockingIOError:
            return
        except OSError as e:
            if e.errno in OUT_OF_RESOURCES:  # out of fds: stop watching the listener a while
                self.accept_paused = True
                self.retry_accept_at = time.monotonic() + RETRY_ACCEPT
                self.epoll.modify(self.listener.fileno(), 0)
            return
        sock.setblocking(False)
        conn = Connection(sock)
        self.conns[sock.fileno()] = conn
        self.epoll.register(sock.fileno(), conn.interest)

    def resume_accept(self):
        if self.accept_paused:
            self.accept_paused = False
            self.epoll.modify(self.listener.fileno(), READABLE)

    def on_readable(self, conn):
        try:
            data = conn.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return
        except OSError:  # a reset: this one client is gone
            self.close(conn)
            return
        if not data:
            # exercise: the starting point has the "#|" lines, not the answer below
            #| # TODO: a tutorial mistake (lesson 06). Which one, and what is the fix?
            #| self.close(conn)  # TODO
            # answer:
            conn.peer_done = True  # the client sends no more; it may still be reading
            self.on_writable(conn)  # closes once everything owed is sent
            # end of the answer
            return
        # exercise: the starting point has the "#|" lines, not the answer below
        #| # TODO: a tutorial mistake (lesson 06). Which one, and what is the fix?
        #| print("received:", data.decode().rstrip(), flush=True)  # TODO
        # answer:
        # Bytes stay bytes: an echo server has no reason to decode what it echoes.
        # end of the answer
        conn.outbox += data
        self.on_writable(conn)

    def on_writable(self, conn):
        while conn.outbox:
            try:
                sent = conn.sock.send(conn.outbox)
            except BlockingIOError:
                break
            except OSError:  # EPIPE, ECONNRESET: the client stopped listening
                self.close(conn)
                return
            del conn.outbox[:sent]
        if len(conn.outbox) >= HIGH_WATER:
            conn.throttled = True
        elif len(conn.outbox) <= LOW_WATER:
            conn.throttled = False
        if conn.peer_done and not conn.outbox:
            self.close(conn)

    def close(self, conn):
        fd = conn.sock.fileno()
        conn.closed = True
        del self.conns[fd]
        self.epoll.unregister(fd)
        conn.sock.close()
        self.resume_accept()

    def dispatch(self, fd, ev):
        conn = self.conns.get(fd)
        if conn is None:
            return
        if ev & (READABLE | TROUBLE):
            self.on_readable(conn)
        if not conn.closed and ev & WRITABLE:
            self.on_writable(conn)
        if not conn.closed:
            wanted = conn.wanted()
            if wanted != conn.interest:
                self.epoll.modify(fd, wanted)
                conn.interest = wanted

    def serve(self):
        listen_fd = self.listener.fileno()
        while True:
            timeout = max(0.0, self.retry_accept_at - time.monotonic()) if self.accept_paused else -1
            for fd, ev in self.epoll.poll(timeout):
                if fd == listen_fd:
                    self.on_accept()
                else:
                    self.dispatch(fd, ev)
            if self.accept_paused and time.monotonic() >= self.retry_accept_at:
                self.resume_accept()

    def shutdown(self):
        for conn in list(self.conns.values()):
            self.close(conn)
        self.epoll.close()
        self.listener.close()


def fail(message):
    print(f"{sys.argv[0]}: error: {message}", file=sys.stderr)
    sys.exit(2)


def stop(signum, frame):
    raise Stop


def main():
    parser = argparse.ArgumentParser(description="A tutorial-style echo server to fix.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=9016, help="0 takes any free port")
    parser.error = lambda message: fail(f"{message} (see --help)")
    args = parser.parse_args()
    listener = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((args.host, args.port))
        listener.listen(BACKLOG)
    except OSError as e:
        fail(f"cannot listen on {args.host}:{args.port}: {e.strerror} (try --port 0)")
    listener.setblocking(False)
    server = Server(listener)
    try:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, stop)
        host, port = listener.getsockname()[:2]
        print(f"listening on {host}:{port}", flush=True)
        server.serve()
    except Stop:
        pass
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)
        server.shutdown()


if __name__ == "__main__":
    main()
