"""Exercise 05: the UDP echo server must treat an empty datagram as a message, not as EOF."""

import socket
from pathlib import Path

import harness
import hostile

EXERCISE = "05_udp_empty_datagram.py"
HOSTILE = hostile.udp  # the lesson's rude clients, run after check() passes
TITLE = "UDP: an empty datagram is a message, not EOF"
HINT = ("In on_readable(), the TODO lines bring TCP's habit to UDP, where no stream ever ends: "
        "a read of 0 bytes is a datagram with nothing in it, from a sender that waits for its "
        "answer like any other. And this drain loop is the only reader: on an edge-triggered "
        "socket, a datagram left in the queue is not reported again until another arrives. The "
        "check sends an empty datagram alone, then one between two others, and its message "
        "says which came back. Stuck: solutions/05_udp_empty_datagram.py has the answer beside "
        "the starting point's lines.")

ANSWER_WAIT = 1.0  # seconds: an echo on loopback takes well under a millisecond


def replies(sock, count):
    """Up to `count` datagrams, each waited for at most ANSWER_WAIT seconds."""
    got = []
    sock.settimeout(ANSWER_WAIT)
    for _ in range(count):
        try:
            got.append(sock.recv(1 << 16))
        except socket.timeout:
            break
    return got


def check(script: Path) -> str:
    with harness.start(script) as server, server.udp_client() as sock:
        sock.sendto(b"", server.address)
        got = replies(sock, 1)
        assert got == [b""], (
            f"sent one empty datagram and got {'no answer' if not got else got} within "
            f"{ANSWER_WAIT:g} s; an empty datagram is a message and deserves its (empty) echo")

        # Three datagrams, queued while the server is stopped, make one edge when it goes on.
        burst = [b"first", b"", b"last"]
        with server.paused():
            for datagram in burst:
                sock.sendto(datagram, server.address)
        got = replies(sock, len(burst))
        assert got == burst, (
            f"sent {burst} in one burst and got back {got}; after the empty datagram the "
            "drain must go on until BlockingIOError, or the rest waits for a new edge")

        sock.sendto(b"still there?", server.address)
        assert replies(sock, 1) == [b"still there?"], "the server stopped answering"
    return "empty datagrams are echoed, and the drain goes on past them"
