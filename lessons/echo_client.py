#!/usr/bin/env python3
"""A client for the echo lessons (01, 02, 03), for a second terminal in class.

    python lessons/echo_client.py --port 9001                 # type lines, see them echoed
    python lessons/echo_client.py --port 9001 --bytes 8000000 # one large payload, checked
    python lessons/echo_client.py --port 9002 --bytes 64 --clients 200
    python lessons/echo_client.py --udp --port 9005            # lesson 05: a datagram per line

With --bytes, each client sends that many random bytes while reading the echo at the same
time (a client that wrote everything before reading would deadlock against any echo server
once both sides' socket buffers are full), then half-closes with shutdown(SHUT_WR) and reads
until the server closes. It reports whether every byte came back intact. Every wait is
bounded by --timeout.
"""

import argparse
import os
import selectors
import socket
import sys
import time


def fail(message):
    print(f"{sys.argv[0]}: error: {message}", file=sys.stderr)
    sys.exit(2)


def connect(host, port, timeout):
    try:
        return socket.create_connection((host, port), timeout=timeout)
    except OSError as e:
        fail(f"cannot connect to {host}:{port}: {e.strerror or e} (is the lesson server running?)")


def interactive(host, port, timeout):
    sock = connect(host, port, timeout)
    print(f"connected to {host}:{port}; type lines, end with Ctrl-D", file=sys.stderr)
    with sock:
        for line in sys.stdin.buffer:
            sock.sendall(line)
            echoed = bytearray()
            while len(echoed) < len(line):
                chunk = sock.recv(len(line) - len(echoed))
                if not chunk:
                    fail("the server closed the connection")
                echoed += chunk
            sys.stdout.buffer.write(echoed)
            sys.stdout.flush()


def interactive_udp(host, port, timeout):
    """Each line typed is one datagram; print each answer, or say that none came."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        print(f"sending datagrams to {host}:{port}; type lines, end with Ctrl-D", file=sys.stderr)
        for line in sys.stdin.buffer:
            sock.sendto(line, (host, port))
            try:
                answer = sock.recv(65536)
            except socket.timeout:
                print(f"(no answer within {timeout:g} s: UDP does not say why)", file=sys.stderr)
                continue
            sys.stdout.buffer.write(answer)
            sys.stdout.flush()


def payload_run(host, port, size, clients, timeout):
    """Each client sends `size` random bytes, half-closes, and reads until EOF."""
    sel = selectors.DefaultSelector()
    conns = []
    for _ in range(clients):
        sock = connect(host, port, timeout)
        sock.setblocking(False)
        data = os.urandom(size)
        conn = {"sock": sock, "data": data, "out": memoryview(data), "got": bytearray(), "eof": False}
        conns.append(conn)
        sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)
        if not size:
            sock.shutdown(socket.SHUT_WR)
            sel.modify(sock, selectors.EVENT_READ, conn)
    deadline = time.monotonic() + timeout
    open_count = clients
    while open_count:
        left = deadline - time.monotonic()
        if left <= 0:
            got = sum(len(conn["got"]) for conn in conns)
            fail(f"timed out after {timeout:g} s with {open_count} of {clients} clients unfinished; "
                 f"{got} of {size * clients} bytes came back")
        for key, mask in sel.select(left):
            conn = key.data
            try:
                if mask & selectors.EVENT_WRITE:
                    n = conn["sock"].send(conn["out"][:256 * 1024])
                    conn["out"] = conn["out"][n:]
                    if not conn["out"]:
                        conn["sock"].shutdown(socket.SHUT_WR)  # "I am done sending"
                        sel.modify(conn["sock"], selectors.EVENT_READ, conn)
                if mask & selectors.EVENT_READ:
                    chunk = conn["sock"].recv(1 << 20)
                    if chunk:
                        conn["got"] += chunk
                    else:
                        sel.unregister(conn["sock"])
                        conn["sock"].close()
                        open_count -= 1
            except BlockingIOError:
                pass
            except OSError as e:
                fail(f"connection failed: {e.strerror or e}")
    intact = sum(conn["got"] == conn["data"] for conn in conns)
    print(f"{clients} client(s) sent {size} bytes each; {intact} got every byte back intact")
    return 0 if intact == clients else 1


def main():
    parser = argparse.ArgumentParser(description="Client for the echo lessons.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--bytes", type=int, metavar="N",
                        help="send N random bytes and check the echo (instead of typing)")
    parser.add_argument("--clients", type=int, default=1, help="with --bytes: how many at once")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds before giving up")
    parser.add_argument("--udp", action="store_true", help="send each line as a UDP datagram")
    parser.error = lambda message: fail(f"{message} (see --help)")
    args = parser.parse_args()
    if not 0 < args.port <= 65535:
        fail(f"--port must be between 1 and 65535, not {args.port}")
    if args.bytes is not None and (args.bytes < 0 or args.clients < 1):
        fail("--bytes must be 0 or more and --clients at least 1")
    try:
        if args.udp:
            interactive_udp(args.host, args.port, args.timeout)
        elif args.bytes is None:
            interactive(args.host, args.port, args.timeout)
        else:
            return payload_run(args.host, args.port, args.bytes, args.clients, args.timeout)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except OSError as e:
        fail(f"connection failed: {e.strerror or e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
