"""Exercise 03: an edge-triggered read handler that drains (lesson 03, pitfall 1)."""

import os
import time

import harness
import hostile

EXERCISE = "03_drain_recv.py"
HOSTILE = hostile.tcp_echo  # the lesson's rude clients, run after check() passes
TITLE = "lesson 03: drain on every EPOLLIN edge"
HINT = ("In on_readable(), under EPOLLET one edge stands for everything that arrived, so read "
        "until the kernel says the socket is empty (BlockingIOError): what is left unread is "
        "not reported again until something new arrives. The loop needs two other ways out: at "
        "EOF recv returns empty bytes every time and never raises, and once on_writable() has "
        "closed or throttled the connection, reading on helps nobody. The check's message says "
        "which is wrong: a 10000-byte write that came back short (the loop stops too soon), or "
        "a server silent or busy after an EOF (it never stops). Stuck: "
        "solutions/03_drain_recv.py has the answer beside the starting point's lines.")


def _echo(server, payload, what):
    """The echo of payload on a new connection, or an AssertionError that says what stalled."""
    with server.connect() as sock:
        harness.send_all(sock, payload)
        got = harness.recv_until_quiet(sock, timeout=5)
    assert got, (f"{what}: no reply at all within {harness.QUIET} s. Is the server stuck in a "
                 "loop? After an earlier client's EOF, recv returns b\"\" every time; it never "
                 "raises BlockingIOError.")
    assert got == payload, (
        f"{what}: sent {len(payload)} bytes in one write and got back {len(got)}, then "
        f"nothing for {harness.QUIET} s. With EPOLLET that write made one edge; a handler "
        "that reads once leaves the rest unread, and epoll never reports it again.")


def check(script):
    with harness.start(script) as server:
        _echo(server, b"small", "a short message")
        _echo(server, os.urandom(10_000), "a 10000-byte message")
        payload = os.urandom(300_000)
        try:  # send everything, shutdown(SHUT_WR), read until the server closes
            got = harness.exchange(server.address, [payload], half_close=True, timeout=5)[0]
        except harness.Stalled as e:
            raise AssertionError(
                f"a client that sent 300000 bytes and then half-closed got {len(e.received)} "
                "bytes back and no close within 5 s") from None
        assert got == payload, "a half-closed client must get every byte back, then EOF"
        try:
            _echo(server, b"anyone there?", "after a client's EOF, a new client")
        except harness.Stalled:
            raise AssertionError("after a client's EOF the server answers nobody: does the loop "
                                 "end when recv returns b\"\"?") from None
        before = server.cpu_seconds()
        time.sleep(0.3)  # a measuring window, not synchronisation
        busy = server.cpu_seconds() - before
        assert busy < 0.1, (f"the idle server used {busy:.2f} s of CPU in 0.3 s: is a loop "
                            "spinning on b\"\" (EOF) or on BlockingIOError?")
        assert server.stop() == 0, "the server should exit with status 0 on SIGTERM"
    return ("10000 bytes in one write came back whole; a half-closed client got all 300000 "
            "bytes and EOF; the server stays idle")
