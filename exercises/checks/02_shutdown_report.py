"""Exercise 02: a report line at shutdown (lesson 02, edge-triggered)."""

import os

import harness
import hostile

EXERCISE = "02_shutdown_report.py"
HOSTILE = hostile.tcp_echo  # the lesson's rude clients, run after check() passes
TITLE = "lesson 02: report connections and bytes at shutdown"
HINT = ("Two counts, kept on the server from __init__() to shutdown(): the connections "
        "on_accept() took, and the bytes the kernel took in on_writable(), which is what "
        "send() returned each time, not what was offered. The check stops the server with "
        "SIGTERM and compares its last line with the one in the exercise's docstring, word for "
        "word; stdout is a pipe there, and a line left in Python's buffer is never seen. "
        "Stuck: solutions/02_shutdown_report.py has the answer beside the starting point's "
        "lines.")


def check(script):
    sizes = [1000, 2000, 3000]
    with harness.start(script) as server:
        payloads = [os.urandom(n) for n in sizes]
        assert harness.exchange(server.address, payloads) == payloads, "the echo must still work"
        status = server.stop()
    expected = f"served {len(sizes)} connections, echoed {sum(sizes)} bytes"
    assert status == 0, f"the server should exit with status 0 on SIGTERM, not {status}"
    assert server.lines and server.lines[-1] == expected, (
        f"after {len(sizes)} clients echoing {sum(sizes)} bytes, the last line printed should "
        f"be {expected!r}; it was {server.lines[-1] if server.lines else 'nothing'!r}")
    return f"printed {expected!r}"
