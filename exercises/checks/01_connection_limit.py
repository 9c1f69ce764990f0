"""Exercise 01: a connection limit with a clear refusal (lesson 01, level-triggered)."""

import harness
import hostile

EXERCISE = "01_connection_limit.py"
HOSTILE = hostile.tcp_echo  # the lesson's rude clients, run after check() passes
TITLE = "lesson 01: cap the connections, refuse the rest clearly"
HINT = ("In on_accept(), the TODO lines run after accept() on purpose: a client left in the "
        "accept queue keeps the listener readable, and level-triggered epoll would report it "
        "on every call, a busy loop. So take the client, and when self.conns already holds "
        "self.max_conns clients, tell it why with REFUSAL and let it go before the loop ever "
        "hears of it. The check's message says what the third client got, and whether the "
        "first two were still served. Stuck: solutions/01_connection_limit.py has the answer "
        "beside the starting point's lines.")
REFUSAL = b"server full, try again later\n"


def check(script):
    with harness.start(script, "--max-conns", "2") as server:
        first, second = server.connect(), server.connect()
        for sock in (first, second):
            harness.send_all(sock, b"hello")
            assert harness.recv_exactly(sock, 5) == b"hello", "the first two clients must be echoed"
        third = server.connect()
        try:
            answer = harness.recv_until_eof(third, timeout=2)
        except harness.Stalled as e:
            raise AssertionError(
                "a third client with --max-conns 2 was neither refused nor closed within 2 s "
                f"(it received {repr(e.received) if e.received else 'nothing'})") from None
        assert answer == REFUSAL, f"the refused client should receive {REFUSAL!r}, got {answer!r}"
        harness.send_all(first, b"still there?")
        assert harness.recv_exactly(first, 12) == b"still there?", \
            "clients already connected must go on being served after a refusal"
        first.close()
        fourth = _connect_when_room(server)
        second.close()
        fourth.close()
        assert server.alive(), f"the server died:\n{server.output()}"
    return "two clients served, the third refused with a clear message, room again after one left"


def _connect_when_room(server):
    """After a client leaves, a new one is served (retrying while the close is processed)."""
    def try_once():
        sock = server.connect()
        harness.send_all(sock, b"me too")
        got = harness.recv_until_quiet(sock, quiet=0.2, timeout=2)
        if got == b"me too":
            return sock
        sock.close()
        return None
    return harness.wait_until(try_once, timeout=5, what="a free place after one client left")
