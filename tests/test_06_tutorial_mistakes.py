"""Lesson 06: every --mistake produces its symptom, every time, and nothing else breaks.

Without a flag the server is the tutorials' shape done right: it passes the friendly clients,
and the same rude client that exposes a mistake does it no harm. Each mistake stays inside the
server's process: a crash ends it, a spin is stopped by SIGTERM with status 0, and nothing is
left running.
"""

import importlib.util
import os
import socket
import sys

import pytest

import harness

LESSON = "06_tutorial_mistakes.py"
MiB = 1 << 20
GET = b"GET / HTTP/1.0\r\n\r\n"
NOT_UTF8 = b"\xff\xfe not text \x80"


def test_without_a_flag_it_passes_the_friendly_clients(start):
    server = start(LESSON)
    payload = os.urandom(MiB)
    assert harness.echo(server.address, payload) == payload
    http = start(LESSON, "--mode", "http")
    with http.connect() as sock:
        harness.send_all(sock, GET)
        assert harness.recv_http_response(sock)[::2] == (200, b"Hello, world!")
        assert harness.recv_until_eof(sock) == b""


# -- crashes: (mistake, what the client does, the last line the server writes) -------------

def first_client(server):
    server.connect().close()


def garbage(server):
    with server.connect() as sock:
        harness.send_all(sock, NOT_UTF8)
        harness.recv_until_quiet(sock)


def polite_close(server):
    with server.connect() as sock:
        harness.send_all(sock, b"bye")
        harness.recv_exactly(sock, 3)


def reset(server):
    sock = server.connect()
    harness.send_all(sock, b"hi")
    harness.recv_exactly(sock, 2)
    harness.reset(sock)


CRASHES = [
    ("recv-on-listener", first_client, "OSError: [Errno 107] Transport endpoint is not connected"),
    ("decode", garbage, "UnicodeDecodeError: 'utf-8' codec can't decode byte 0xff"),
    ("use-after-close", polite_close, "KeyError: "),
    ("uncaught-reset", reset, "ConnectionResetError: [Errno 104] Connection reset by peer"),
]


@pytest.mark.parametrize("mistake, client, last_line", CRASHES, ids=[c[0] for c in CRASHES])
def test_a_crash_mistake_dies_on_its_client_and_the_default_does_not(start, mistake, client,
                                                                     last_line):
    server = start(LESSON, "--mistake", mistake)
    client(server)
    status, last = harness.last_words(server)
    assert status == 1 and last.startswith(last_line), (status, last)

    trigger = [] if mistake != "recv-on-listener" else ["--trigger", "et"]
    fine = start(LESSON, *trigger)
    client(fine)
    assert fine.asleep_in_epoll() and harness.echo(fine.address, b"next") == b"next"
    assert fine.stop() == 0 and "Traceback" not in fine.output()


# -- lost bytes ----------------------------------------------------------------------------

OWED = 768 * 1024  # more than the kernel takes for a slow reader, less than HIGH_WATER


def half_close_echo(server):
    """(all came back before EOF, what came is an unbroken start) for a slow reader that
    sends OWED bytes more than the kernel takes for it, half-closes, and reads only once the
    server has read everything: the server then owes part of the echo itself, every run."""
    payload = os.urandom(harness.kernel_takes() + OWED)
    got = harness.owed_at_eof(server, payload)
    return len(got) == len(payload), got == payload[:len(got)]


@pytest.mark.parametrize("mistake, unbroken", [("close-on-eof", True), ("partial-send", False)])
def test_a_lost_bytes_mistake_loses_them_and_the_default_does_not(start, mistake, unbroken):
    assert half_close_echo(start(LESSON, "--mistake", mistake)) == (False, unbroken)
    fine = start(LESSON)
    assert [half_close_echo(fine) for _ in range(2)] == [(True, True)] * 2


# -- spins ---------------------------------------------------------------------------------

@pytest.mark.parametrize("mistake, answers_others", [("empty-recv-spin", True),
                                                     ("read-until-exception", False)])
def test_a_spin_mistake_spins_after_a_client_leaves_and_sigterm_ends_it(start, mistake,
                                                                        answers_others):
    server = start(LESSON, "--mistake", mistake)
    socket.create_connection(server.address, timeout=5).close()
    samples = harness.activity(server, 0.5)  # a measuring window
    # Never asleep, and busy: on a loaded machine a spin gets less than a whole CPU (with
    # other tests running beside it, a tick or two in the window), but it waits only for a
    # CPU, never in epoll_wait.
    assert {state for _, _, state in samples} == {"R"} and samples[-1][1] > 0, samples
    with server.connect() as sock:
        harness.send_all(sock, GET)
        assert bool(harness.recv_until_quiet(sock)) == answers_others
    assert server.stop() == 0 and harness.gone(server.pid)


def test_the_default_responder_sleeps_after_a_client_leaves(start):
    server = start(LESSON, "--mode", "http")
    socket.create_connection(server.address, timeout=5).close()
    assert server.asleep_in_epoll()
    samples = harness.activity(server, 0.3)
    assert {state for _, _, state in samples} == {"S"} and samples[-1][1] <= 0.02, samples


# -- memory --------------------------------------------------------------------------------

def test_unbounded_buffer_takes_all_a_client_sends_and_the_default_pushes_back(start):
    server = start(LESSON, "--mistake", "unbounded-buffer")
    rss = server.rss_bytes()
    with server.connect() as sock:
        with pytest.raises(AssertionError, match="kept taking"):
            harness.fill_without_reading(sock, limit=32 * MiB)
        # Much of it may still wait in the kernel's buffers (loopback's grow to 32 MiB) while
        # the server waits for a CPU on a busy machine: it takes all of it, in the end.
        harness.wait_until(lambda: server.rss_bytes() - rss > 16 * MiB, what="the server holding 16 MiB")
    fine = start(LESSON)
    rss = fine.rss_bytes()
    with fine.connect() as sock:
        assert harness.fill_without_reading(sock, limit=32 * MiB) < 32 * MiB
    assert fine.rss_bytes() - rss < 4 * MiB


@pytest.mark.parametrize("mistake", ["leak-state", None])
def test_leak_state_keeps_what_a_crowd_left(start, mistake):
    server = start(LESSON, *(["--mistake", mistake] if mistake else []))
    fds, rss = server.open_fds(), server.rss_bytes()
    crowd = [server.connect() for _ in range(4)]
    for sock in crowd:
        harness.fill_without_reading(sock, quiet=0.05)
    held = server.rss_bytes() - rss
    for sock in crowd:
        harness.reset(sock)
    harness.wait_until(lambda: server.open_fds() == fds, what="every client's fd closed")
    kept = server.rss_bytes() - rss
    assert held > 3 * MiB
    assert (kept > held / 2) if mistake else (kept < held / 4), (held, kept)


# -- exposure ------------------------------------------------------------------------------

def reaches_127_0_0_2(port):
    try:
        socket.create_connection(("127.0.0.2", port), timeout=5).close()
        return True
    except ConnectionRefusedError:
        return False


def test_bind_all_is_reachable_at_another_address_and_a_second_run_is_a_traceback(start):
    server = start(LESSON, "--mistake", "bind-all", host=None)
    assert server.host == "0.0.0.0" and reaches_127_0_0_2(server.port)
    second = harness.run(LESSON, "--mistake", "bind-all", "--port", str(server.port))
    assert second.returncode == 1 and "Traceback" in second.stderr
    assert second.stderr.rstrip().endswith("OSError: [Errno 98] Address already in use")
    fine = start(LESSON, host=None)
    assert fine.host == "127.0.0.1" and not reaches_127_0_0_2(fine.port)


# -- the flags -----------------------------------------------------------------------------

@pytest.mark.parametrize("args", [["--mistake", "empty-recv-spin", "--mode", "echo"],
                                  ["--mistake", "recv-on-listener", "--trigger", "lt"],
                                  ["--mistake", "no-such-mistake"]])
def test_a_mistake_in_the_wrong_place_is_one_line_and_status_2(args):
    result = harness.run(LESSON, "--port", "0", *args)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "error:" in result.stderr and "Traceback" not in result.stderr


def test_list_names_every_mistake_and_where_it_is_done_right():
    result = harness.run(LESSON, "--list")
    named = [line.split(":")[0] for line in result.stdout.splitlines()]
    choices = harness.run(LESSON, "--mistake", "?").stderr  # argparse lists the choices
    assert result.returncode == 0 and named and all(f"'{name}'" in choices for name in named)
    assert all("; done right in " in line and "lesson" in line.partition("; done right in ")[2]
               for line in result.stdout.splitlines())


# -- the exercise: its check names each mistake still there --------------------------------

def test_the_exercise_check_names_the_one_mistake_left(tmp_path):
    root = harness.ROOT
    sys.path.insert(0, str(root / "exercises" / "checks"))
    spec = importlib.util.spec_from_file_location("check06", root / "exercises" / "checks"
                                                  / "06_two_mistakes.py")
    check06 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check06)
    tools = importlib.util.spec_from_file_location("exercise_tool06", root / "tools" / "exercises.py")
    tool = importlib.util.module_from_spec(tools)
    tools.loader.exec_module(tool)
    start, solution, blocks = tool.split((root / "solutions" / check06.EXERCISE).read_text())
    assert len(blocks) == 2
    for left in blocks:  # put back one mistake: the start's lines of one block only
        _, start_lines, answer_lines = left
        source = solution.replace("".join(answer_lines), "".join(start_lines), 1)
        assert source != solution
        script = tmp_path / check06.EXERCISE
        script.write_text(source)
        with pytest.raises(AssertionError) as failed:
            check06.check(script)
        harness.stop_all()
        said = str(failed.value)
        named = [name for name in ("decode", "close-on-eof") if f"{name}:" in said]
        assert said.startswith("1 tutorial mistake still there") and len(named) == 1, said
        assert ("decode" in "".join(start_lines)) == (named == ["decode"]), said
