#!/usr/bin/env python3
"""A client for the echo lessons (01, 02, 03 over TCP, 05 over UDP), for a second terminal.

    python3 lessons/echo_client.py --port 9001                     # type lines, see replies
    python3 lessons/echo_client.py --port 9001 --bytes 8000000     # one large payload, checked
    python3 lessons/echo_client.py --port 9002 --bytes 64 --clients 200
    python3 lessons/echo_client.py --udp --port 9005               # a datagram per line
    python3 lessons/echo_client.py --udp --port 9005 --bytes 0     # one empty datagram

Typing (the default). Each line you type is sent, and whatever the server sends is printed
the moment it arrives, asked for or not: an echo, but also a refusal or a goodbye that came
before you typed anything. Ctrl-D ends your side (shutdown(SHUT_WR): "I will send no more")
and the client waits for the server to finish and close. If the server closes first, the
client says "server closed the connection" and exits with status 1.

Payloads (--bytes N, with --clients K for several at once). The client opens all K
connections first and says so ("connected K clients ..."); only then does each one send N
random bytes, reading the echo while it sends (a client that wrote everything before
reading would deadlock against any echo server once both sides' buffers are full). Once
all N bytes are back it shuts down its sending side and waits for the server to close. It
reports how many clients got every byte back intact. Connecting all of them before any
sends lets you stop a server (Ctrl-Z), queue K clients in the kernel and resume it (fg):
all K arrived while it could not call epoll_wait, so their arrivals make one report.

UDP (--udp). Each line typed is one datagram; each answer is printed when it comes, with a
note when it differs in length from what was sent. With --bytes N, each of the K clients
sends one datagram of N random bytes (0: an empty datagram, a message like any other) and
checks the answer.

Every wait for the server is bounded by --timeout; only waiting for you to type is not.
Exit status: 0 when the server did what an echo server does, 1 when it did not (bytes
missing or changed, no answer, a close before you were done, a timeout), 2 for a mistake in
the command or a server that cannot be reached, 130 after Ctrl-C.
"""

import argparse
import collections
import errno
import os
import resource
import select
import socket
import sys
import time

CHUNK = 64 * 1024  # bytes read from stdin or a socket at a time
SEND_CHUNK = 256 * 1024  # bytes offered to one send() in the payload run
TYPED_AHEAD_LIMIT = 1 << 20  # unsent typed bytes at which we stop reading stdin for a while
PAYLOAD_LIMIT = 1 << 30  # --bytes times --clients: every payload is kept to check its echo
UDP_MAX = {socket.AF_INET: 65507, socket.AF_INET6: 65527}  # 65,535 less the headers


# -- talking to the user ----------------------------------------------------------------

def fail(message):
    """A mistake in the command, or a server that is not there: one line, status 2."""
    print(f"{sys.argv[0]}: error: {message}", file=sys.stderr)
    sys.exit(2)


def note(message):
    """What the client is doing or what happened, on stderr beside the replies."""
    sys.stderr.write(message + "\n")  # one write: it cannot be split by other output


def plural(count, word):
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def family_of(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


# -- TCP ----------------------------------------------------------------------------------

def connect(host, port, timeout):
    try:
        return socket.create_connection((host, port), timeout=timeout)
    except OSError as e:
        if e.errno in (errno.EMFILE, errno.ENFILE):
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            fail(f"out of file descriptors: this process may open {soft} (see `ulimit -n`); "
                 "use fewer --clients")
        udp = " for lesson 05, which speaks UDP, add --udp" if e.errno == errno.ECONNREFUSED else ""
        fail(f"cannot connect to {host}:{port}: {e.strerror or e} "
             f"(is the lesson server running, on that port?{udp})")


def type_lines(host, port, timeout):
    """Send what the user types; print what the server sends, whenever it arrives."""
    sock = connect(host, port, timeout)
    sock.setblocking(False)
    note(f"connected to {host}:{port}; type lines, Ctrl-D to finish")
    stdin = sys.stdin.fileno()
    # poll, not epoll: stdin may be a regular file (`< notes.txt`), and epoll refuses
    # regular files (EPERM); poll reports them always ready, which is the truth.
    poller = select.poll()
    poller.register(stdin, select.POLLIN)
    poller.register(sock, select.POLLIN)
    outbox = bytearray()  # typed, not yet taken by the kernel
    typing = True  # until Ctrl-D (end of file on stdin)
    half_closed = False
    sent = received = 0
    deadline = None  # once we are done, how long we wait for the server to finish
    with sock:
        while True:
            # Derive what to watch from the state: stdin while the user may type and the
            # server keeps up; the socket for reading always, for writing while we owe it.
            if typing:
                poller.modify(stdin, select.POLLIN if len(outbox) < TYPED_AHEAD_LIMIT else 0)
            poller.modify(sock, select.POLLIN | (select.POLLOUT if outbox else 0))
            if not typing and not outbox and not half_closed:
                sock.shutdown(socket.SHUT_WR)  # the server sees end of file: we are done
                half_closed = True
            wait_ms = None
            if not typing:
                deadline = deadline or time.monotonic() + timeout
                left = deadline - time.monotonic()
                if left <= 0:
                    note(f"the server did not close the connection within {timeout:g} s "
                         f"of your Ctrl-D ({received} of {sent} bytes came back)")
                    return 1
                wait_ms = left * 1000
            for fd, events in poller.poll(wait_ms):
                if fd == stdin:
                    typed = os.read(stdin, CHUNK)
                    if typed:
                        outbox += typed
                    else:
                        typing = False
                        poller.unregister(stdin)
                    continue
                if events & (select.POLLIN | select.POLLHUP | select.POLLERR):
                    try:
                        data = sock.recv(CHUNK)
                    except BlockingIOError:
                        data = None
                    except OSError as e:  # ECONNRESET: the server aborted the connection
                        note(f"the server reset the connection ({e.strerror})")
                        return 1
                    if data:
                        received += len(data)
                        sys.stdout.buffer.write(data)
                        sys.stdout.flush()
                    elif data == b"":
                        return server_closed(typing or outbox, sent, received)
                if outbox and events & select.POLLOUT:
                    try:
                        count = sock.send(outbox)
                    except BlockingIOError:
                        continue
                    except OSError:  # EPIPE: the server is gone; its EOF or reset follows
                        outbox.clear()
                        continue
                    del outbox[:count]
                    sent += count


def server_closed(we_were_sending, sent, received):
    """The server closed first, or closed after our Ctrl-D: say which, and what came back."""
    if we_were_sending:
        note("server closed the connection")
        return 1
    if received != sent:
        note(f"server closed the connection; {received} bytes came back for {sent} sent")
        return 1
    note("server closed the connection after echoing everything")
    return 0


class Client:
    """One connection of a payload run: what it sends, what came back, how it ended."""

    def __init__(self, sock, size):
        self.sock = sock
        self.data = os.urandom(size)
        self.unsent = memoryview(self.data)
        self.got = bytearray()
        self.half_closed = False  # we sent end of file (shutdown(SHUT_WR))
        self.done = False  # the server closed it (or it failed)
        self.error = None  # why it failed, if it did

    def finish(self):
        if not self.half_closed:
            self.sock.shutdown(socket.SHUT_WR)
            self.half_closed = True

    def intact(self):
        return self.done and self.error is None and self.got == self.data


def send_payloads(host, port, size, count, timeout):
    """K clients: connect them all, then each sends `size` random bytes and reads the echo."""
    clients = {}  # fd -> Client
    for _ in range(count):
        sock = connect(host, port, timeout)
        sock.setblocking(False)
        clients[sock.fileno()] = Client(sock, size)
    note(f"connected {plural(count, 'client')} to {host}:{port}; "
         f"now each sends {plural(size, 'byte')} and reads the echo")
    poller = select.poll()
    for fd, client in clients.items():
        if size:
            poller.register(fd, select.POLLIN | select.POLLOUT)
        else:
            client.finish()  # nothing to send, nothing to wait for
            poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + timeout
    waiting = count
    try:
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                print(f"timed out after {timeout:g} s: " + payload_summary(clients, size))
                return 1
            for fd, events in poller.poll(left * 1000):
                client = clients[fd]
                try:
                    if events & select.POLLOUT and client.unsent:
                        sent = client.sock.send(client.unsent[:SEND_CHUNK])
                        client.unsent = client.unsent[sent:]
                        if not client.unsent:
                            poller.modify(fd, select.POLLIN)
                    if events & (select.POLLIN | select.POLLHUP | select.POLLERR):
                        chunk = client.sock.recv(1 << 20)
                        if chunk:
                            client.got += chunk
                        else:  # the server finished with this client and closed
                            client.done = True
                    if not client.unsent and len(client.got) >= size and not client.done:
                        # Every byte is back: now say "I am done sending". Not earlier: the
                        # end of file is an arrival too, and a server that stalls should
                        # stall on the data alone, the same way every time.
                        client.finish()
                except BlockingIOError:
                    pass
                except OSError as e:  # a reset, say: this one client failed
                    client.done, client.error = True, e.strerror or str(e)
                if client.done:
                    poller.unregister(fd)
                    client.sock.close()
                    waiting -= 1
    except KeyboardInterrupt:
        print("interrupted: " + payload_summary(clients, size))
        return 130
    finally:
        for client in clients.values():
            client.sock.close()
    print(payload_summary(clients, size))
    return 0 if all(client.intact() for client in clients.values()) else 1


def payload_summary(clients, size):
    """One line: how many got their bytes back, and what became of the others."""
    clients = list(clients.values())
    intact = sum(client.intact() for client in clients)
    parts = [f"{intact} of {plural(len(clients), 'client')} got all {size} bytes back intact"]
    closed = [client for client in clients
              if client.done and client.error is None and not client.intact()]
    nothing = sum(not client.got for client in closed)
    part = sum(bool(client.got) and client.data.startswith(client.got) for client in closed)
    other = len(closed) - nothing - part
    failed = [client.error for client in clients if client.error]
    still = sum(not client.done for client in clients)
    if nothing:
        parts.append(f"{nothing} got nothing back before the server closed")
    if part:
        parts.append(f"{part} got only part of the echo before the server closed")
    if other:
        parts.append(f"{other} got different bytes back")
    if failed:
        parts.append(f"{len(failed)} failed ({failed[0]})")
    if still:
        parts.append(f"{still} still waiting")
    if intact < len(clients):
        got = sum(len(client.got) for client in clients)
        parts.append(f"{got} of {size * len(clients)} bytes came back")
    return "; ".join(parts)


# -- UDP ----------------------------------------------------------------------------------

def udp_socket(host, port):
    # Connected: the kernel then passes us only the server's datagrams, and turns an ICMP
    # "port unreachable" into ECONNREFUSED on a later call: a way to say nothing listens.
    sock = socket.socket(family_of(host), socket.SOCK_DGRAM)
    try:
        sock.connect((host, port))
    except OSError as e:
        sock.close()
        fail(f"cannot send to {host}:{port}: {e.strerror or e}")
    sock.setblocking(False)
    return sock


def nobody_listens(host, port):
    fail(f"nothing listens on UDP {host}:{port} (the kernel answered 'port unreachable'; "
         "is the lesson server running, on that port?)")


def compare(sent, answer):
    """A note when an answer is not the datagram that was sent, else None."""
    if answer == sent:
        return None
    if len(answer) < len(sent) and sent.startswith(answer):
        return f"(the answer has {len(answer)} of the {len(sent)} bytes sent: cut short)"
    return f"(the answer of {len(answer)} bytes differs from the {len(sent)} bytes sent)"


def type_datagrams(host, port, timeout):
    """Each line typed is one datagram; print each answer when it comes."""
    sock = udp_socket(host, port)
    note(f"sending datagrams to {host}:{port}; type lines, Ctrl-D to finish")
    stdin = sys.stdin.fileno()
    poller = select.poll()  # poll, not epoll: stdin may be a regular file (epoll: EPERM)
    poller.register(stdin, select.POLLIN)
    poller.register(sock, select.POLLIN)
    partial = bytearray()  # typed bytes not yet ended by a newline
    unanswered = collections.deque()  # (datagram, when it was sent), oldest first
    typing, status = True, 0
    with sock:
        while typing or unanswered:
            if unanswered:
                left = unanswered[0][1] + timeout - time.monotonic()
                if left <= 0:
                    note(f"(no answer within {timeout:g} s: UDP does not say why)")
                    unanswered.popleft()
                    status = 1
                    continue
            wait_ms = left * 1000 if unanswered else None
            for fd, _ in poller.poll(wait_ms):
                if fd == stdin:
                    typed = os.read(stdin, CHUNK)
                    partial += typed
                    if not typed:  # end of input: a last line without newline goes too
                        typing = False
                        poller.unregister(stdin)
                    *lines, rest = partial.split(b"\n")
                    datagrams = [line + b"\n" for line in lines]
                    if not typing and rest:
                        datagrams.append(bytes(rest))
                        rest = b""
                    partial[:] = rest
                    for datagram in datagrams:
                        send_datagram(sock, datagram, host, port)
                        unanswered.append((datagram, time.monotonic()))
                    continue
                while True:  # every answer waiting, one datagram per recv
                    try:
                        answer = sock.recv(UDP_MAX[socket.AF_INET6])
                    except BlockingIOError:
                        break
                    except ConnectionRefusedError:
                        nobody_listens(host, port)
                    sys.stdout.buffer.write(answer)
                    sys.stdout.flush()
                    if unanswered:
                        datagram, _ = unanswered.popleft()
                        difference = compare(datagram, answer)
                        if difference:
                            note(("\n" if not answer.endswith(b"\n") else "") + difference)
                            status = 1
    return status


def send_datagram(sock, datagram, host, port):
    try:
        sock.send(datagram)  # a datagram goes whole, or not at all
    except ConnectionRefusedError:
        nobody_listens(host, port)
    except OSError as e:  # EMSGSIZE: a line longer than a datagram can carry
        fail(f"cannot send a datagram of {len(datagram)} bytes: {e.strerror or e}")


def send_one_datagram_each(host, port, size, clients, timeout):
    """K clients, one datagram of `size` random bytes each; check every answer."""
    socks = {}  # fd -> socket, one per client
    payloads = {}  # fd -> the datagram it sent
    what = "an empty datagram" if size == 0 else f"a datagram of {plural(size, 'byte')}"
    for _ in range(clients):
        sock = udp_socket(host, port)
        socks[sock.fileno()] = sock
        payloads[sock.fileno()] = os.urandom(size)
        send_datagram(sock, payloads[sock.fileno()], host, port)
    each = " each" if clients > 1 else ""
    note(f"{plural(clients, 'client')} sent {what}{each} to {host}:{port}")
    poller = select.poll()
    for fd in socks:
        poller.register(fd, select.POLLIN)
    answers = {}  # fd -> the datagram that came back
    deadline = time.monotonic() + timeout
    try:
        while len(answers) < clients:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for fd, _ in poller.poll(left * 1000):
                try:
                    answers[fd] = socks[fd].recv(UDP_MAX[socket.AF_INET6])
                except BlockingIOError:
                    continue
                except ConnectionRefusedError:
                    nobody_listens(host, port)
                poller.unregister(fd)
    except KeyboardInterrupt:
        return 130
    finally:
        for sock in socks.values():
            sock.close()
    intact = sum(answers.get(fd) == payload for fd, payload in payloads.items())
    silent = clients - len(answers)
    line = f"{intact} of {plural(clients, 'client')} got {what} back intact"
    if silent:
        line += f"; {silent} got no answer within {timeout:g} s (UDP does not say why)"
    changed = [compare(payloads[fd], answer) for fd, answer in answers.items()
               if answer != payloads[fd]]
    if changed:
        line += f"; {len(changed)} got something else {changed[0]}"
    print(line)
    return 0 if intact == clients else 1


# -- the program ------------------------------------------------------------------------

def parse_args():
    parser = argparse.ArgumentParser(
        description="Client for the echo lessons: type lines, or send checked payloads.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--bytes", type=int, metavar="N",
                        help="send N random bytes and check the echo, instead of typing; "
                             "with --udp, one datagram of N bytes (0: an empty datagram)")
    parser.add_argument("--clients", type=int, default=1, metavar="K",
                        help="with --bytes: K clients, all connected before any sends")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="S",
                        help="seconds to wait for the server before giving up (default 30)")
    parser.add_argument("--udp", action="store_true", help="talk UDP, for lesson 05")
    parser.error = lambda message: fail(f"{message} (see --help)")
    args = parser.parse_args()
    if not 0 < args.port <= 65535:
        fail(f"--port must be between 1 and 65535, not {args.port}")
    if not args.timeout > 0:
        fail(f"--timeout must be more than 0 seconds, not {args.timeout:g}")
    if args.clients < 1:
        fail(f"--clients must be at least 1, not {args.clients}")
    if args.bytes is None and args.clients != 1:
        fail("--clients needs --bytes (typing uses one connection)")
    if args.bytes is not None:
        if args.bytes < 0:
            fail(f"--bytes must be 0 or more, not {args.bytes}")
        largest = UDP_MAX[family_of(args.host)]
        if args.udp and args.bytes > largest:
            fail(f"--bytes with --udp is one datagram, and a UDP datagram over this address "
                 f"family carries at most {largest} bytes, not {args.bytes}")
        if args.bytes * args.clients > PAYLOAD_LIMIT:
            fail(f"--bytes times --clients must stay under {PAYLOAD_LIMIT} "
                 "(each payload is kept in memory to check its echo)")
    return args


def main():
    args = parse_args()
    try:
        if args.udp and args.bytes is None:
            return type_datagrams(args.host, args.port, args.timeout)
        if args.udp:
            return send_one_datagram_each(args.host, args.port, args.bytes, args.clients,
                                          args.timeout)
        if args.bytes is None:
            return type_lines(args.host, args.port, args.timeout)
        return send_payloads(args.host, args.port, args.bytes, args.clients, args.timeout)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
