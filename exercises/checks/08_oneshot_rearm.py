"""Exercise 08: re-arm an EPOLLONESHOT connection after every turn (lesson 08, threads)."""

import os
import time

import harness
import hostile

EXERCISE = "08_oneshot_rearm.py"
TITLE = "lesson 08: re-arm an EPOLLONESHOT connection after every turn"
HINT = ("In update_interest(): the EPOLLONESHOT report that handed this connection to a thread "
        "also disabled it, and only EPOLL_CTL_MOD arms it again (EPOLL_CTL_ADD fails: the fd "
        "is still in the interest list). So lesson 02's rule, tell the kernel only when the "
        "mask changes, does not hold here: a mask that did not change must still go back to "
        "the kernel after every turn. If the check says the connection went silent after its "
        "first message, the trace lines it prints show the last time your server re-armed it. "
        "Stuck: solutions/08_oneshot_rearm.py has the answer beside the starting point's "
        "lines.")
MESSAGES = [b"first message", b"second message", b"third message"]


def HOSTILE(script):  # the lesson's rude clients, run after check() passes
    return hostile.tcp_echo(script)


def _idle(server):
    """Wait (bounded) until every thread of the server sleeps in epoll_wait: whatever the
    client sends next arrives while nobody is busy with this connection."""
    harness.wait_until(  # or it has died: crash_first then says so, not this wait
        lambda: harness.gone(server.pid) or harness.every_thread_in_epoll_wait(server.pid),
        timeout=hostile.SETTLE, what="every thread of the server in epoll_wait")


def _silent(server, fd, sent, echoed):
    """The message for a connection that went silent, with what the trace says of it."""
    about = [line for line in server.lines if not line.startswith("stopping")
             and (line.endswith(f" fd {fd}") or f" fd {fd}:" in line)]
    trace = "\n    ".join(about[-6:]) or "(nothing)"
    return (f"the connection went silent: its first message was echoed, but message "
            f"{sent} ({MESSAGES[sent - 1]!r}), sent while every thread slept in epoll_wait, got "
            f"{len(echoed)} bytes back within {harness.QUIET} s of silence. The server's trace "
            f"for that connection, last lines:\n    {trace}\nNo thread was told of the new "
            "message: EPOLLONESHOT disabled the connection after its first report, and "
            "nothing re-armed it.")


def check(script):
    # A server that dies is reported as the crash it is, first, with its exception
    # (hostile.crash_first), not as the wait or the echo that its death cut short.
    with harness.start(script, "--trace") as server:
        with server.connect() as sock:
            fd = int(server.wait_for_line(": accept fd ").rpartition(" ")[2])
            for number, message in enumerate(MESSAGES, 1):
                with hostile.crash_first(server, f"while a client sent {len(MESSAGES)} "
                                                 "messages one at a time (at message "
                                                 f"{number}, {message!r})"):
                    _idle(server)
                    harness.send_all(sock, message)
                    echoed = harness.recv_until_quiet(sock, timeout=5)
                    if echoed != message and number == 1:
                        raise AssertionError(
                            f"a client's first message ({message!r}) came back as {echoed!r}: "
                            "the echo itself must still work")
                    if echoed != message:
                        raise AssertionError(_silent(server, fd, number, echoed))
        payload = os.urandom(300_000)  # arrives in many pieces: each one a report, or none
        with hostile.crash_first(server, "a client sent 300000 bytes and half-closed"):
            try:
                got = harness.exchange(server.address, [payload], half_close=True, timeout=5)[0]
            except harness.Stalled as e:
                raise AssertionError(
                    f"a client that sent 300000 bytes and half-closed got {len(e.received)} "
                    "back and no close within 5 s: its later pieces were never reported") from None
            assert got == payload, "a half-closed client must get every byte back, then EOF"
        with hostile.crash_first(server, "the server was left idle"):
            _idle(server)
            before = server.cpu_seconds()
            time.sleep(0.3)  # a measuring window, not synchronisation
            busy = server.cpu_seconds() - before
            assert busy < 0.1, f"the idle server used {busy:.2f} s of CPU in 0.3 s"
        assert server.stop() == 0, "the server should exit with status 0 on SIGTERM"
    return (f"{len(MESSAGES)} messages on one connection, each sent while every thread slept, "
            "each echoed; 300000 bytes in many pieces and a half-close: all back, then EOF")
