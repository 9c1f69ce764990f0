"""Exercise 09: unregister before close (lesson 09, the interest list's fine print)."""

import os
import signal

import harness
import hostile

EXERCISE = "09_unregister_first.py"
HOSTILE = hostile.tcp_echo  # the lesson's rude clients, run after check() passes
TITLE = "lesson 09: unregister before close, even while a child holds a copy"
HINT = ("In close(), the order of the two calls is the exercise: the epoll entry belongs to "
        "the open socket, not to its number, and while the snapshot child holds a copy, "
        "close() is not the last close, so the entry stays and goes on reporting. After "
        "close() the fd number names nothing, or may already be someone else's, so it can no "
        "longer remove that entry; the try and except around it only hide the failure. "
        "`python3 lessons/09_interest_and_wakeups.py dup-close` shows the same without a "
        "child, and the check's message says whether your server spun or crashed. Stuck: "
        "solutions/09_unregister_first.py has the answer beside the starting point's lines.")
SNAPSHOT = "3"  # seconds the snapshot child lives: longer than this check needs


# A crash is reported as a crash, first: hostile.py holds the one version of this.
DYING, exits, crash_first = hostile.DYING, hostile.exits, hostile.crash_first


def check(script):
    with harness.start(script, "--snapshot-seconds", SNAPSHOT) as server:
        with crash_first(server, "two clients sent a message, then a snapshot was asked for"):
            leaving, staying = server.connect(), server.connect()
            for sock in (leaving, staying):
                harness.send_all(sock, b"hello")
                assert harness.recv_exactly(sock, 5) == b"hello", "the echo must work"
            server.send_signal(signal.SIGUSR1)
            line = server.wait_for_line("snapshot: child started", timeout=5)
            assert "2 client sockets" in line, f"the snapshot child should hold 2 clients: {line!r}"

        with crash_first(server, "a client left during a snapshot"):
            before = server.open_fds()
            leaving.close()  # the client leaves while the child holds a copy of its socket
            harness.wait_until(lambda: not server.alive() or server.open_fds() < before, timeout=5,
                               what="your server closing the socket of a client that left")
            if not server.asleep_in_epoll(timeout=1.0):
                used = server.cpu_seconds_over(0.3)  # OSError once it has exited: a crash
                if not used:  # asleep, but not in epoll_wait: a server that has crashed
                    exits(server, float(SNAPSHOT) + DYING)  # may first wait for its child
                raise AssertionError(  # unless it has crashed: crash_first says so instead
                    "a client left during a snapshot, and your server never went back to sleep "
                    f"in epoll_wait (it used {used:.2f} s of CPU in 0.3 s): epoll kept reporting "
                    "the closed fd, whose entry lives on while the snapshot child holds a copy "
                    "of the socket")

        with crash_first(server, "a new client came during the snapshot"):
            payload = os.urandom(4096)
            assert harness.echo(server.address, payload) == payload, \
                "a new client, during the snapshot, must be echoed"
            harness.send_all(staying, b"still there?")
            assert harness.recv_exactly(staying, 12) == b"still there?", \
                "a client connected before the snapshot must still be served"
            assert server.asleep_in_epoll(timeout=1.0), \
                "after serving the new client your server did not go back to sleep in epoll_wait"
            staying.close()
            assert server.alive(), "your server exited"
    return ("a client left while a snapshot child held its socket: the server unregistered "
            "it, slept in epoll_wait and served newcomers")
