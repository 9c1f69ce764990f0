"""Exercise 04: at most N requests per keep-alive connection (lesson 04, HTTP)."""

import http.client

import harness
import hostile

EXERCISE = "04_max_requests.py"
HOSTILE = hostile.http  # the lesson's rude clients, run after check() passes
TITLE = "lesson 04: end a keep-alive connection after N requests"
HINT = ("In respond(), right after keep_alive is decided: each request counts on conn.served, "
        "and the connection's max_requests-th answer is its last, so keep_alive goes off for "
        "it; a self.options.max_requests of 0 means no limit. The rest is already there: an "
        "answer without keep-alive says Connection: close, and finish() ends the connection "
        "once it is sent, so the requests pipelined behind it are never answered. The check "
        "lists which of three answers said Connection: close; only the third should, so count "
        "before you compare. Stuck: solutions/04_max_requests.py has the answer beside the "
        "starting point's lines.")

GET = b"GET / HTTP/1.1\r\nHost: check\r\n\r\n"


def check(script):
    with harness.start(script, "--max-requests", "3") as server:
        with server.connect() as sock:
            harness.send_all(sock, GET * 5)  # five pipelined requests, one write
            pending = bytearray()
            heads = []
            for number in range(1, 4):
                try:
                    status, head, body = harness.recv_http_response(sock, pending, timeout=5)
                except harness.Stalled as e:
                    raise AssertionError(f"answer {number} of 3 did not come: {e}") from None
                assert status == 200 and body == b"Hello, world!", \
                    f"answer {number} should be 200 Hello, world!, got {head[:40]!r}"
                heads.append(head)
            closes = [b"Connection: close\r\n" in head for head in heads]
            assert closes == [False, False, True], (
                "with --max-requests 3, only the third answer should say 'Connection: close'; "
                f"which ones did: {closes}")
            try:
                rest = bytes(pending) + harness.recv_until_eof(sock, timeout=3)
            except harness.Stalled as e:
                raise AssertionError(
                    "after the third answer the server should end the connection, but it "
                    f"stayed open (it sent {len(e.received)} more bytes)") from None
            assert rest == b"", (
                "requests 4 and 5 must not be answered on that connection, "
                f"but {rest.count(b'HTTP/1.1 ')} more answers came")
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        try:
            for _ in range(7):  # http.client opens a new connection when told to close
                conn.request("GET", "/")
                assert conn.getresponse().read() == b"Hello, world!"
        finally:
            conn.close()
    with harness.start(script) as server, server.connect() as sock:
        harness.send_all(sock, GET * 10)
        pending = bytearray()
        heads = [harness.recv_http_response(sock, pending, timeout=5)[1] for _ in range(10)]
        assert not any(b"Connection: close" in head for head in heads), \
            "without --max-requests (0: no limit) a connection must stay open"
    return "the third request of three closes the connection; no flag, no limit"
