"""Exercise 02: a report line at shutdown (lesson 02, edge-triggered)."""

import os

import harness
import hostile

EXERCISE = "02_shutdown_report.py"
HOSTILE = hostile.tcp_echo  # the lesson's rude clients, run after check() passes
TITLE = "lesson 02: report connections and bytes at shutdown"
HINT = ("Keep two counters on the server (set to 0 in __init__); add 1 for each accepted "
        "connection in on_accept and the value send() returned in on_writable; in shutdown(), "
        "print(f\"served {n} connections, echoed {b} bytes\", flush=True).")


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
