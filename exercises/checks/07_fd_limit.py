"""Exercise 07: --max-fds raises the soft file descriptor limit at start-up (lesson 07)."""

import os
import resource
import subprocess

import harness
import hostile

EXERCISE = "07_fd_limit.py"
HOSTILE = hostile.tcp_echo  # the lesson's rude clients, run after check() passes
TITLE = "lesson 07: --max-fds raises the soft fd limit, or says in one line why not"
HINT = ("In raise_fd_limit(), two limits: the soft one is what the kernel enforces, and a "
        "process may raise it as far as the hard one, which only root can raise. So --max-fds "
        "moves the soft limit of RLIMIT_NOFILE and leaves the hard one as it was; asked for "
        "more than the hard limit (unless that is RLIM_INFINITY), the server stops with fail() "
        "and one line that names the hard limit, never a traceback. The check starts your "
        "server with a soft limit of 64 and reads its limits back, then asks for one more than "
        "the hard limit; its message says which went wrong. Stuck: solutions/07_fd_limit.py "
        "has the answer beside the starting point's lines.")
LOW = 64  # the soft limit the server is started with here: room for about 60 clients
WANTED = 256  # what --max-fds asks for
CLIENTS = 150  # at once: more than LOW allows, fewer than WANTED


def check(script):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    unlimited = hard == resource.RLIM_INFINITY
    assert unlimited or hard >= WANTED, f"this machine's hard fd limit ({hard}) is below {WANTED}"
    resource.setrlimit(resource.RLIMIT_NOFILE, (LOW, hard))  # the server inherits this one
    try:
        server = harness.start(script, "--max-fds", str(WANTED))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    with server:
        limits = resource.prlimit(server.pid, resource.RLIMIT_NOFILE)
        assert limits == (WANTED, hard), (
            f"started with a soft limit of {LOW} and --max-fds {WANTED}, the server's limits "
            f"are {limits} (soft, hard): the soft limit should be {WANTED}, the hard one "
            "unchanged")
        payloads = [os.urandom(100) for _ in range(CLIENTS)]
        try:
            echoed = harness.exchange(server.address, payloads, timeout=5)
        except harness.Stalled as e:
            raise AssertionError(f"{CLIENTS} clients at once were not all echoed: {e}") from None
        assert echoed == payloads, "the echo came back altered"
    if unlimited:
        return f"--max-fds {WANTED} raised the soft limit; {CLIENTS} clients served at once"

    try:
        result = harness.run(script, "--port", "0", "--max-fds", str(hard + 1), timeout=5)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"with --max-fds {hard + 1}, above the hard limit ({hard}), the "
                             "server started anyway; it should stop with one line on stderr "
                             "and status 2") from None
    said = result.stderr.strip()
    assert "Traceback" not in result.stderr, (
        f"--max-fds above the hard limit ended in a traceback: {said.splitlines()[-1]}")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, (
        f"--max-fds {hard + 1} (above the hard limit) should print one line on stderr and exit "
        f"with status 2; it exited with {result.returncode} after printing {said!r}")
    assert str(hard) in said, f"the line should name the hard limit ({hard}): {said!r}"
    return (f"--max-fds {WANTED} raised the soft limit and {CLIENTS} clients were served at "
            f"once; --max-fds {hard + 1} refused in one line naming the hard limit")
