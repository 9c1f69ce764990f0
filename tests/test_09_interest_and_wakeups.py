"""Lesson 09: each demonstration runs, exits 0 and reports what the kernel really did.

The lesson is a program of sub-commands (`dup-close`, `fdinfo`, `fork`, ...), each printing
plain sentences. These tests run every one as an instructor would, in a subprocess, and hold
each sentence to the fact it states; a user's mistake is one line and status 2.
"""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import harness

SCRIPT = "09_interest_and_wakeups.py"
DEMOS = ["dup-close", "fdinfo", "fork", "errors", "nested", "rdhup", "wake", "timers"]


def demo(*args, timeout=30):
    """Run one demonstration; return its stdout lines (it must exit 0, silent on stderr)."""
    result = harness.run(SCRIPT, *args, timeout=timeout)
    assert result.returncode == 0 and result.stderr == "", result.stdout + result.stderr
    return result.stdout.splitlines()


def line_with(lines, words):
    found = [line for line in lines if words in line]
    assert found, f"no line says {words!r}:\n" + "\n".join(lines)
    return found[0]


def entries_after(lines, title):
    """The count in "TITLE: N entries" (or "1 entry")."""
    return int(re.search(r": (\d+) entr", line_with(lines, title)).group(1))


def test_help_lists_every_demonstration():
    result = harness.run(SCRIPT, "--help")
    assert result.returncode == 0
    for name in DEMOS:
        assert re.search(rf"^\s+{name}\b", result.stdout, re.M), name


@pytest.mark.parametrize("args, says", [
    ([], "no demonstration given"),
    (["bogus"], "'bogus' is not a demonstration"),
    (["wake", "--rounds", "0"], "must be more than 0"),
    (["wake", "--ways", "smoke"], "invalid choice"),
    (["timers", "--period", "soon"], "not a number"),
    (["rdhup", "--port", "70000"], "between 0 and 65535"),
], ids=["nothing", "unknown", "rounds", "ways", "period", "port"])
def test_a_mistake_is_one_line_and_status_2(args, says):
    result = harness.run(SCRIPT, *args)
    assert result.returncode == 2, result
    assert result.stdout == "" and len(result.stderr.splitlines()) == 1, result.stderr
    assert says in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("args", [[], ["--port", "9009"], ["bogus"]], ids=["nothing", "port-first", "unknown"])
def test_a_missing_or_wrong_demonstration_says_which_exist_and_how_to_run_one(args):
    # `--port 9009` alone, as for the server lessons: its value is taken for the demonstration.
    result = harness.run(SCRIPT, *args)
    assert result.returncode == 2 and result.stdout == "", result
    [line] = result.stderr.splitlines()
    assert "Traceback" not in line and "invalid choice" not in line, line
    assert re.search(r"choose one of dup-close, .*timers\b", line) and all(name in line for name in DEMOS)
    assert f"{SCRIPT} rdhup --port 9009" in line, line  # how to run the one that listens


def test_port_for_a_demonstration_that_does_not_listen_names_the_one_that_does():
    result = harness.run(SCRIPT, "dup-close", "--port", "9009")
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert "only rdhup listens" in result.stderr and f"{SCRIPT} rdhup --port 9009" in result.stderr


def test_a_port_in_use_is_one_line_and_status_2():
    with harness.free_port_in_use() as taken:
        result = harness.run(SCRIPT, "rdhup", "--port", str(taken.getsockname()[1]))
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert "Address already in use" in result.stderr and "--port 0" in result.stderr


def test_dup_close_events_for_a_closed_number_and_the_fix():
    lines = demo("dup-close")
    number = re.search(r"registered fd (\d+), made a duplicate, closed fd \1 without",
                       "\n".join(lines)).group(1)
    # The mistake: the entry outlives the close and reports under the closed number.
    assert f"epoll reported fd {number} IN" in line_with(lines, "the peer wrote one byte")
    assert "EBADF" in line_with(lines, "unregister of the closed number")
    # A new socket under the same number is another file: added beside the old entry.
    assert f"same number, fd {number}" in line_with(lines, "a new socket got")
    assert "accepted" in line_with(lines, "registering it")
    assert entries_after(lines, "the kernel's interest list now") == 2
    assert len([line for line in lines if line.startswith(f"  fd {number} watches the")]) >= 2
    assert f"fd {number} IN, fd {number} IN" in line_with(lines, "both peers wrote")
    assert entries_after(lines, "  left") == 1
    assert "watches the old socket" in lines[lines.index(line_with(lines, "  left")) + 1]
    assert "0 entries left" in line_with(lines, "closing the last duplicate")
    # The fix: unregistered before the close, the duplicate changes nothing.
    assert "epoll reported nothing" in line_with(lines, "unregistered, closed")
    assert "0 entries remain" in line_with(lines, "unregistered, closed")


def test_fdinfo_shows_the_interest_list_before_and_after():
    lines = demo("fdinfo")
    counts = [entries_after(lines, title) for title in (
        "a new epoll instance", "after register(a, IN)", "after modify(b, IN)",
        "after unregister(a)", "after dup(b) and close(b)", "after closing the duplicate")]
    assert counts == [0, 2, 2, 1, 1, 0]
    # The kernel adds ERR and HUP to every entry: IN (0x1) is stored as 0x19.
    assert "socket b, events IN|OUT|ERR|HUP|ET (0x8000001d)" in "\n".join(lines)
    assert "socket a, events IN|ERR|HUP (0x19)" in "\n".join(lines)
    start = lines.index(line_with(lines, "after modify(b, IN)"))
    assert "socket b, events IN|ERR|HUP (0x19)" in "\n".join(lines[start:start + 3])


def test_fork_shares_one_instance_and_one_ready_list():
    lines = demo("fork")
    # Edge-triggered: one arrival wakes one waiter, the one that went to sleep last.
    assert "parent woke with the event, the child slept on" in line_with(lines, "edge-triggered: ")
    # Level-triggered: the kernel hands the event out and wakes the next waiter too.
    assert "child and parent woke" in line_with(lines, "level-triggered: ")
    assert "the child got IN, then the parent got nothing" in line_with(lines, "calls epoll_wait first")
    assert "still has 1 entry, and so has the parent's (1)" in line_with(lines, "closed its copy")
    assert "the parent's interest list now has 0 entries" in line_with(lines, "child unregistered")


def test_errors_each_refusal_names_its_errno():
    lines = demo("errors")
    expected = {
        "register a socket already registered": "EEXIST, FileExistsError",
        "modify a socket never registered": "ENOENT, FileNotFoundError",
        "unregister a socket never registered": "ENOENT, FileNotFoundError",
        "register a regular file": "EPERM, PermissionError",
        "register a directory": "EPERM, PermissionError",
        "register a closed fd number": "EBADF, OSError",
        "register an epoll instance in itself": "EINVAL, OSError",
        "register A in B when B is already in A": "ELOOP, OSError",
    }
    for what, says in expected.items():
        assert line_with(lines, what).strip() == f"{what}: {says}"
    assert "ready at once (True)" in line_with(lines, "select() on a regular file")


def test_nested_epoll_is_readable_while_its_ready_list_is_not_empty():
    lines = demo("nested")
    assert line_with(lines, "Nothing sent").endswith("outer reports nothing")
    assert line_with(lines, "the peer wrote").endswith("outer reports inner IN")
    assert line_with(lines, "only inner.poll()").endswith("the socket IN")
    assert line_with(lines, "the byte read").endswith("outer reports nothing")


def test_rdhup_reports_a_half_close_before_any_read():
    lines = demo("rdhup", "--port", "0")
    assert re.fullmatch(r"listening on 127\.0\.0\.1:\d+", lines[0])
    with_rdhup = lines.index(line_with(lines, "registered for IN|RDHUP"))
    without = lines.index(line_with(lines, "registered for IN;"))
    assert "reported IN|RDHUP" in lines[with_rdhup + 1]
    assert "after 0 recv calls (3 bytes still unread)" in lines[with_rdhup + 1]
    assert "reported IN; EOF was known only when recv returned b''" in lines[without + 1]
    assert "after 2 recv calls" in lines[without + 1]
    replies = [line for line in lines if "may still answer a half-closed client" in line]
    assert len(replies) == 2 and all(line.endswith("b'ok'") for line in replies)


def test_wake_eventfd_pipe_and_wakeup_fd_wake_at_once_nothing_waits_for_the_timeout():
    lines = demo("wake", "--rounds", "3")
    tick = float(re.search(r"next timeout \((\d+) ms", line_with(lines, "next timeout")).group(1))

    def ms(words):
        return float(re.search(r": ([\d.]+) ms$", line_with(lines, words)).group(1))
    # Queued while the loop slept: without a wake-up it waits out (almost) the whole timeout.
    assert ms("nothing wakes it") > tick / 2
    assert ms("handler only") > tick / 2
    handler = re.search(r"handler ran after ([\d.]+) ms", line_with(lines, "handler ran after"))
    assert float(handler.group(1)) < tick / 2  # the handler ran; the loop slept on
    for way in ("eventfd, written", "a self-pipe", "with signal.set_wakeup_fd"):
        assert ms(way) < tick / 2, way
    assert "one read returns 3" in line_with(lines, "Three eventfd writes")
    assert line_with(lines, "Three eventfd writes").endswith("not readable: True")
    assert f"the byte [{int(signal.SIGUSR1)}] into the pipe" in line_with(lines, "set_wakeup_fd: a")
    assert "3 bytes to read, one per write" in line_with(lines, "Three writes to a self-pipe")
    assert "non-blocking mode" in line_with(lines, "refuses the pipe while its writing end blocks")


def test_timers_never_early_and_a_timerfd_counts_every_expiry():
    lines = demo("timers", "--period", "0.02", "--ticks", "5")
    how = "os.timerfd_create" if sys.version_info >= (3, 13) else "timerfd_create via ctypes"
    assert f"timerfd ({how})" in line_with(lines, "an fd in the interest list")
    for words in ("an fd in the interest list", "taken from the nearest one"):
        least = float(re.search(r"([\d.]+) ms at least", line_with(lines, words)).group(1))
        assert least >= 0, words  # printed with no minus sign: no tick ran before its time
        assert "-" not in line_with(lines, words)
    busy = line_with(lines, "reads the timerfd once")
    counted = int(re.search(r"once: (\d+) expirations", busy).group(1))
    passed = float(re.search(r"\(([\d.]+) periods had passed", busy).group(1))
    assert counted >= 3 and int(passed) - 1 <= counted <= int(passed), busy


def test_fork_leaves_no_process_behind():
    # The fork demonstration starts children; when the program ends, none may remain. (A
    # child that slept through an arrival is ended; every one is waited for.)
    proc = subprocess.Popen([sys.executable, str(harness.script_path(SCRIPT)), "fork"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert in_session(proc.pid) == []


def in_session(sid):
    """The processes (not zombies of others) still in session `sid`."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[3]) == sid:
                found.append(int(entry))
    return found
