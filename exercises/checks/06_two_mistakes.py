"""Exercise 06: two of the tutorials' mistakes left in an echo server (lesson 06)."""

import os

import harness
import hostile

EXERCISE = "06_two_mistakes.py"
HOSTILE = hostile.tcp_echo  # the lesson's rude clients, run after check() passes
TITLE = "lesson 06: find and fix two tutorial mistakes"
HINT = ("Two of lesson 06's tutorial mistakes are left in on_readable(), one at each TODO, and "
        "the check's message names each one it still sees by its name in lesson 06's table. "
        "`python3 lessons/06_tutorial_mistakes.py --list` prints that table with, for each "
        "mistake, the lesson and the place where it is done right: read that place, and make "
        "this server behave the same. Stuck: solutions/06_two_mistakes.py has the answer "
        "beside the starting point's lines.")

NOT_UTF8 = b"\xff\xfe not text \x80"
OWED = 768 * 1024  # beyond what the kernel takes for a slow reader; under HIGH_WATER


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


def closes_at_eof(script):
    """The mistake named, or None: a slow reader that sends more than the kernel takes for
    it (by OWED bytes), half-closes, and reads only once the server has read everything."""
    with harness.start(script) as server:
        size = harness.kernel_takes() + OWED
        payload = os.urandom(size // 2).hex().encode()  # text: .decode() cannot fail here
        try:
            got = harness.owed_at_eof(server, payload, timeout=10)
        except harness.Stalled as e:
            return (f"close-on-eof: a client that half-closed got {len(e.received)} "
                    f"of {len(payload)} bytes and no end of the stream within 10 s")
        if got != payload:
            return (f"close-on-eof: a client that sent {len(payload)} bytes, half-closed "
                    f"(shutdown SHUT_WR) and then read got {len(got)} of them, then EOF: the "
                    "rest of what was owed was thrown away")
    return None


def check(script):
    left = [found for found in (decodes(script), closes_at_eof(script)) if found]
    if left:
        raise AssertionError(f"{len(left)} tutorial mistake{'s' if len(left) > 1 else ''} "
                             "still there: " + "; ".join(left))
    return ("bytes that are not UTF-8 echoed as they came; a half-closed client got all it "
            "was owed, then EOF")
