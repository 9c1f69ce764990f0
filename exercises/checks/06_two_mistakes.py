"""Exercise 06: two of the tutorials' mistakes left in an echo server (lesson 06)."""

import os

import harness
import hostile

EXERCISE = "06_two_mistakes.py"
HOSTILE = hostile.tcp_echo  # the lesson's rude clients, run after check() passes
TITLE = "lesson 06: find and fix two tutorial mistakes"
HINT = ("Lesson 06's table lists the tutorials' mistakes and where each is done right. Two "
        "are in this server, at the lines marked TODO: one kills the server when a client "
        "sends a byte that is not UTF-8; the other drops the echo still owed when a client "
        "half-closes. Echo bytes as bytes; at EOF, close only once the outbox is empty.")

NOT_UTF8 = b"\xff\xfe not text \x80"
OWED = 8 << 20  # more than the kernel's buffers hold for a reader with a small window


def decodes(script):
    """The mistake named, or None: a client sends bytes that are not UTF-8."""
    with harness.start(script) as server:
        with server.connect(timeout=5) as sock:
            harness.send_all(sock, NOT_UTF8, timeout=5)
            try:
                got = harness.recv_exactly(sock, len(NOT_UTF8), timeout=5)
            except harness.Stalled:
                got = None
        if got != NOT_UTF8:
            try:
                _, last = harness.last_words(server, timeout=2)
            except harness.Stalled:  # still running: it only failed to echo them
                return (f"decode: a client sent {len(NOT_UTF8)} bytes that are not UTF-8 "
                        "and did not get them back")
            return (f"decode: a client sent {len(NOT_UTF8)} bytes that are not UTF-8 and "
                    f"your server died: {last}")
    return None


TRIES = 5  # whether the server still holds some of the echo at EOF depends on timing


def closes_at_eof(script):
    """The mistake named, or None: slow readers send OWED bytes, half-close and read on."""
    with harness.start(script) as server:
        for _ in range(TRIES):
            payload = os.urandom(OWED // 2).hex().encode()  # text: .decode() cannot fail here
            with server.connect(timeout=5, rcvbuf=4096) as sock:
                try:
                    got = harness.half_close_and_read(sock, payload, timeout=10)
                except harness.Stalled as e:
                    return (f"close-on-eof: a client that half-closed got {len(e.received)} "
                            f"of {OWED} bytes and no end of the stream within 10 s")
            if got != payload:
                return (f"close-on-eof: a client that sent {OWED} bytes, half-closed (shutdown "
                        f"SHUT_WR) and read on got {len(got)} of them, then EOF: the rest of "
                        "what was owed was thrown away")
    return None


def check(script):
    left = [found for found in (decodes(script), closes_at_eof(script)) if found]
    if left:
        raise AssertionError(f"{len(left)} tutorial mistake{'s' if len(left) > 1 else ''} "
                             "still there: " + "; ".join(left))
    return (f"bytes that are not UTF-8 echoed as they came; a half-closed client got all "
            f"{OWED} bytes, then EOF")
