"""Lesson 08: threads on one epoll instance, processes on one port, and their supervisor.

Each test names what it guards; each was seen to fail with that mistake put back."""

import collections
import importlib.util
import os
import select
import signal
import subprocess
import sys
import time

import pytest

import harness

LESSON = "08_workers.py"
WORKERS = 4
MODES = {
    "one thread": [],
    "threads": ["--threads", "4"],
    "threads oneshot": ["--threads", "4", "--oneshot"],
    "processes": ["--processes", "3"],
    "exclusive": ["--processes", "3", "--exclusive"],
    "reuseport": ["--processes", "3", "--reuseport"],
}


# -- every mode: 200 clients at once, every byte back once and in order ---------------------

@pytest.mark.parametrize("args", MODES.values(), ids=MODES.keys())
def test_200_concurrent_clients_get_every_byte_back_once(start, args):
    server = start(LESSON, *args)
    payloads = [os.urandom(size) for size in (1, 1000, 20_000, 100_000) * 50]
    assert harness.exchange(server.address, payloads, timeout=30) == payloads
    # and half-closed clients get all they are owed, then EOF
    owed = [os.urandom(50_000) for _ in range(20)]
    assert harness.exchange(server.address, owed, half_close=True, timeout=30) == owed
    assert server.stop() == 0
    assert "Traceback" not in server.output(), server.output()
    if "--processes" in args:
        assert server.lines[-1] == "every worker stopped cleanly", server.output()


def hostile_clients():
    """exercises/checks/hostile.py: the rude clients every echo lesson must survive."""
    path = harness.ROOT / "exercises" / "checks" / "hostile.py"
    spec = importlib.util.spec_from_file_location("hostile_clients", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("mode", ["threads", "threads oneshot", "processes"])
def test_rude_clients_end_only_their_own_connection_in_every_mode(mode):
    # A reset mid-send, a client that never reads, a half-close, garbage: with threads in one
    # connection's state, or workers, each one still costs only its own connection.
    hostile_clients().tcp_echo(LESSON, *MODES[mode])  # raises, saying which client broke it
    server = harness.started[-1]  # the server it drove, stopped by now
    assert "Traceback" not in server.output() and "died" not in server.output(), server.output()


# -- threads: one connection handed to two threads, and EPOLLONESHOT -------------------------

def reads(server):
    return sum(": read fd " in line for line in server.lines)


def send_piece_by_piece(server, pieces):
    """Send each piece once a thread has read the one before: it arrives while that thread
    is still at work on its piece (--work-ms). Returns the echo of them all."""
    with server.connect() as sock:
        for piece in pieces:
            seen = reads(server)
            harness.send_all(sock, piece)
            harness.wait_until(lambda: reads(server) > seen, what="a thread reading the piece")
        return harness.recv_exactly(sock, sum(map(len, pieces)))


# A big piece (four times the work) and then a small one, on one connection.
PIECES = [b"B" * 4096, b"s"]
WORK = ["--work-ms", "60"]  # per KiB: 240 ms for the big piece, 60 ms for the small one


def shared(server):
    return [line for line in server.lines if "is still being handled by" in line]


def test_without_oneshot_two_threads_are_handed_one_connection_and_its_bytes_stay_in_order(start):
    # Edge-triggered alone, a piece that arrives while one thread works on the connection is
    # reported to another. Unguarded, that thread would echo the small piece first.
    server = start(LESSON, "--threads", "2", *WORK, "--trace")
    assert send_piece_by_piece(server, PIECES) == b"".join(PIECES)
    server.stop()  # then every line it printed has been read
    assert shared(server), server.output()


def test_no_lock_lets_the_small_piece_overtake_the_big_one(start):
    server = start(LESSON, "--threads", "2", "--no-lock", *WORK, "--trace")
    assert send_piece_by_piece(server, PIECES) == b"".join(reversed(PIECES))
    server.stop()
    assert shared(server), server.output()


def test_with_oneshot_one_thread_owns_the_connection_until_it_re_arms(start):
    server = start(LESSON, "--threads", "2", "--oneshot", *WORK, "--trace")
    assert send_piece_by_piece(server, PIECES) == b"".join(PIECES)
    # Re-armed: a message sent once every thread is back in epoll_wait is still reported.
    with server.connect() as sock:
        for message in (b"once", b"twice", b"three times"):
            harness.wait_until(lambda: harness.every_thread_in_epoll_wait(server.pid),
                               what="every thread in epoll_wait")
            harness.send_all(sock, message)
            assert harness.recv_exactly(sock, len(message), timeout=5) == message
    server.stop()
    assert not shared(server), server.output()


# -- processes: the herd, EPOLLEXCLUSIVE, SO_REUSEPORT ---------------------------------------

CONNECTIONS = 20


def woken(server, count=CONNECTIONS, clients=None):
    pids = harness.worker_pids(server, WORKERS)
    return harness.woken_per_connection(server, pids, count, clients)


def test_the_herd_wakes_every_worker_and_exclusive_wakes_one(start):
    herd = woken(start(LESSON, "--processes", str(WORKERS), "--trace"))
    exclusive = woken(start(LESSON, "--processes", str(WORKERS), "--exclusive", "--trace"))
    herd_counts = [n for n, _ in herd]
    exclusive_counts = [n for n, _ in exclusive]
    assert sum(n >= 2 for n in herd_counts) > CONNECTIONS / 2, herd_counts
    assert sum(n == 1 for n in exclusive_counts) > CONNECTIONS / 2, exclusive_counts
    assert sum(exclusive_counts) < sum(herd_counts)


def test_reuseport_wakes_only_the_owner_and_spreads_the_clients(start):
    server = start(LESSON, "--processes", str(WORKERS), "--reuseport", "--trace")
    found = woken(server, 40)
    assert all(n == 1 for n, _ in found), found  # nobody woken for another's client
    per_worker = collections.Counter(by for _, by in found)
    assert set(per_worker) == set(range(WORKERS)), per_worker  # every worker got some


def echoed_until_quiet(clients):
    """Which clients got any answer before all of them had been silent for harness.QUIET."""
    answered = [False] * len(clients)
    while True:
        ready = select.select([s for s, done in zip(clients, answered) if not done], [], [],
                              harness.QUIET)[0]
        if not ready:
            return answered
        for sock in ready:
            answered[clients.index(sock)] = bool(sock.recv(64))


def test_with_reuseport_clients_hashed_to_a_stopped_worker_wait_for_it(start):
    server = start(LESSON, "--processes", str(WORKERS), "--reuseport", "--trace")
    pids = harness.worker_pids(server, WORKERS)
    os.kill(pids[0], signal.SIGSTOP)
    try:
        clients = [server.connect() for _ in range(40)]
        for sock in clients:
            harness.send_all(sock, b"ping")
        answered = echoed_until_quiet(clients)
        waiting = answered.count(False)
        assert 0 < waiting < len(clients), answered
    finally:
        os.kill(pids[0], signal.SIGCONT)
    for sock, done in zip(clients, answered):
        if not done:
            assert harness.recv_exactly(sock, 4) == b"ping"  # served once it runs again
        sock.close()


# -- supervision ------------------------------------------------------------------------------

def gone_within(pids, seconds):
    try:
        harness.wait_until(lambda: all(harness.gone(pid) for pid in pids), timeout=seconds,
                           what="every worker gone")
        return True
    except harness.Stalled:
        return False


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("mode", ["processes", "reuseport"])
def test_a_signal_to_the_parent_stops_every_worker_cleanly_within_a_second(start, mode, signum):
    server = start(LESSON, *MODES[mode])
    pids = harness.worker_pids(server, 3)
    began = time.monotonic()
    server.send_signal(signum)
    assert server.proc.wait(timeout=5) == 0
    assert time.monotonic() - began < 1.0
    assert gone_within(pids.values(), 1.0)
    server.stop()
    assert server.lines[-1] == "every worker stopped cleanly", server.output()


def test_a_crashed_worker_is_reported_and_the_others_serve_on(start):
    server = start(LESSON, "--processes", "3")
    pids = harness.worker_pids(server, 3)
    os.kill(pids[1], signal.SIGKILL)
    line = server.wait_for_line("died")
    assert line == f"worker 1 (pid {pids[1]}) died: killed by SIGKILL"
    for _ in range(10):
        assert harness.echo(server.address, b"still here") == b"still here"
    assert server.alive()
    assert server.stop() == 0


def own_process_group(tmp_path):
    """A launcher that puts the lesson in a session and process group of its own before it
    runs, as a shell does for a job: the test can then signal the group as Ctrl-C does
    without signalling itself."""
    launcher = tmp_path / "own_group.py"
    launcher.write_text("import os, sys\nos.setsid()\nos.execv(sys.executable, [sys.executable, "
                        f"'-u', {str(harness.script_path(LESSON))!r}, *sys.argv[1:]])\n")
    return launcher


def test_ctrl_c_to_the_process_group_stops_every_worker_cleanly_and_a_kill_is_reported(
        start, tmp_path):
    # Ctrl-C signals the whole group, workers too. A worker that stopped on that SIGINT by
    # itself would be reported as dead ("exit status 0") before the parent asks it to stop;
    # a worker ignores SIGINT and waits for the parent's SIGTERM. A real death still shows.
    server = start(own_process_group(tmp_path), "--processes", "3")
    assert os.getpgid(server.pid) == server.pid != os.getpgid(0)
    pids = harness.worker_pids(server, 3)
    os.kill(pids[1], signal.SIGKILL)
    assert server.wait_for_line("died") == f"worker 1 (pid {pids[1]}) died: killed by SIGKILL"
    for index in (0, 2):
        assert harness.asleep_in_epoll(pids[index]), f"worker {index} never slept in epoll_wait"
    os.killpg(server.pid, signal.SIGINT)
    assert server.proc.wait(timeout=5) == 0, server.output()
    server.stop()
    assert [line for line in server.lines if "died" in line or "stopped:" in line] == \
        [f"worker 1 (pid {pids[1]}) died: killed by SIGKILL"], server.output()
    assert server.lines[-1] == "every worker stopped cleanly", server.output()
    assert gone_within(pids.values(), 1.0)


def test_no_worker_outlives_a_parent_killed_with_sigkill(start):
    # The parent gets no chance to stop anyone. One worker is stopped (SIGSTOP) too, as a
    # worker stopped in a debugger would be: it could not act on any signal but SIGKILL.
    server = start(LESSON, "--processes", "3", "--reuseport")
    pids = harness.worker_pids(server, 3)
    # "started" is said at fork; a worker asks for the parent-death signal a moment later,
    # so stop it only once it serves (asleep in epoll_wait), as a debugger would find it.
    assert harness.asleep_in_epoll(pids[2]), "worker 2 never went to sleep in epoll_wait"
    os.kill(pids[2], signal.SIGSTOP)
    server.proc.kill()
    try:
        assert gone_within(pids.values(), 2.0), [harness.process_state(p) for p in pids.values()]
    finally:
        for pid in pids.values():  # never leave one behind, even when the test fails
            if not harness.gone(pid):
                os.kill(pid, signal.SIGKILL)


def test_no_process_outlives_a_killed_notebook_kernel():
    # A process that started the server through the harness, as a notebook's kernel does,
    # is killed with SIGKILL: the server (the harness's parent-death signal) and then its
    # workers (their own) must all go.
    code = ("import sys, time; sys.path.insert(0, sys.argv[1]); import harness; "
            "server = harness.start('08_workers.py', '--processes', '2'); "
            "pids = [server.pid, *harness.worker_pids(server, 2).values()]; "
            "print(*pids, flush=True); time.sleep(60)")
    kernel = subprocess.Popen([sys.executable, "-c", code, str(harness.ROOT / "notebooks")],
                              stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    pids = []
    try:
        pids = [int(pid) for pid in kernel.stdout.readline().split()]
        assert len(pids) == 3, "the stand-in kernel did not start the server"
        kernel.kill()
        kernel.wait(timeout=5)
        assert gone_within(pids, 2.0), [harness.process_state(p) for p in pids]
    finally:
        kernel.kill()
        kernel.wait(timeout=5)
        kernel.stdout.close()
        for pid in pids:
            if not harness.gone(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("args", [["--exclusive"], ["--reuseport"], ["--threads", "2", "--processes", "2"],
                                  ["--processes", "2", "--exclusive", "--reuseport"],
                                  ["--threads", "0"], ["--processes", "-1"], ["--work-ms", "x"],
                                  ["--processes", "2", "--no-lock"]])
def test_flags_that_do_not_go_together_are_one_clear_line(args):
    result = harness.run(LESSON, "--port", "0", *args)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "error:" in result.stderr and "Traceback" not in result.stderr


# -- the exercise's check ----------------------------------------------------------------------

def test_the_exercise_check_reports_a_crash_first_and_at_once(tmp_path):
    # `register` where `modify` belongs: EEXIST ends a thread, and the thread ends the server.
    # The check says so on its first line, not that some wait or echo timed out.
    name = "lesson08_exercise_check"  # a dataclass needs its module in sys.modules
    spec = importlib.util.spec_from_file_location(name, harness.ROOT / "exercises" / "check.py")
    check = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    exercise = next(ex for ex in check.load_exercises() if ex.name.startswith("08_"))
    solution = (harness.ROOT / "solutions" / exercise.name).read_text(encoding="utf-8")
    rearm = "        self.epoll.modify(fd, wanted | self.client_flags)\n        # end of the answer"
    assert solution.count(rearm) == 1
    (tmp_path / exercise.name).write_text(solution.replace(rearm, rearm.replace("modify",
                                                                                "register")))
    began = time.monotonic()
    ok, detail = exercise.run(tmp_path)
    first = detail.splitlines()[0]
    assert not ok and "your server crashed: FileExistsError" in first, detail
    assert "(line " in first and "in update_interest)" in first, detail
    assert time.monotonic() - began < 4.0, "the crash was reported only after a wait ran out"
