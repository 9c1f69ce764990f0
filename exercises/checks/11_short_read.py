"""Exercise 11: the short-read rule (lesson 11), checked by counting the server's recv calls."""

import os
import socket
import time

import harness
import hostile

EXERCISE = "11_short_read.py"
HOSTILE = hostile.tcp_echo  # the lesson's rude clients, run after check() passes
TITLE = "lesson 11: one recv per message, by the short-read rule"
HINT = ("In read_batch(), the short-read rule (from --step short-read on: self.short_read): a "
        "recv that returned fewer than RECV_SIZE bytes emptied the socket, so the recv after "
        "it would only raise BlockingIOError, and the batch can end there. A full read proves "
        "nothing, and a short read that came with the client's EOF (ev has PEER_CLOSED) must "
        "read on: under edge triggering no later report will announce that EOF. The check "
        "counts recv calls per message with --count and wants 1, then sends a large message "
        "and data with its EOF; its message says which went wrong. Stuck: "
        "solutions/11_short_read.py has the answer beside the starting point's lines.")

ROUNDS = 20
MESSAGE = bytes(range(64))
STEP = ("--step", "short-read")


def recv_per_message(script, *flags):
    """recv calls per 64-byte message: ROUNDS round trips on one connection, each sent once
    the server sleeps in epoll_wait again, counted by the server's --count."""
    with harness.start(script, *STEP, "--count", *flags) as server:
        with server.connect() as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for _ in range(ROUNDS):
                harness.send_all(sock, MESSAGE)
                assert harness.recv_exactly(sock, len(MESSAGE)) == MESSAGE, \
                    "a 64-byte message came back changed"
                deadline = time.monotonic() + harness.IO_TIMEOUT
                while not harness.in_epoll_wait(server):  # read from /proc, not slept on
                    assert time.monotonic() < deadline, "the server never went back to epoll_wait"
        line = server.wait_for_line("system calls:")
    counts = dict(item.split("=") for item in line.split()[2:])
    return round(int(counts["recv"]) / ROUNDS)


def check(script):
    for trigger in ("level", "edge"):
        calls = recv_per_message(script, "--trigger", trigger)
        assert calls == 1, (
            f"{trigger}-triggered, --step short-read: {calls} recv calls per 64-byte message, "
            "counted by --count. The second one only raises BlockingIOError: after a read "
            f"that returned fewer than RECV_SIZE bytes, read_batch should return.")
    with harness.start(script, *STEP, "--trigger", "edge") as server:
        payload = os.urandom(300_000)  # several full reads: a full read is not a short one
        try:
            got = harness.echo(server.address, payload, timeout=5)
        except harness.Stalled as e:
            raise AssertionError(
                f"edge-triggered, a 300000-byte message: {len(e.received)} bytes came back, "
                "then nothing. Stop only after a read that returned LESS than RECV_SIZE: "
                "a full read may leave more, and no new edge reports it.") from None
        assert got == payload, "a 300000-byte message came back changed"
        with server.connect() as sock:
            with server.paused():  # data and EOF arrive together: one report, IN|RDHUP
                harness.send_all(sock, b"last words")
                sock.shutdown(socket.SHUT_WR)
            try:
                got = harness.recv_until_eof(sock, timeout=3)
            except harness.Stalled as e:
                raise AssertionError(
                    "edge-triggered, a client that sent 10 bytes and its EOF together got "
                    f"{len(e.received)} bytes back and no close within 3 s: the short read "
                    "left the EOF unread, and no edge will announce it. Read on when ev has "
                    "PEER_CLOSED.") from None
        assert got == b"last words", "the last words came back changed"
    return ("one recv per 64-byte message, level- and edge-triggered; a large message and "
            "an EOF that came with the data were read to the end")
