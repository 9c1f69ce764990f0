"""Lesson 10: the event loop built on epoll, part by part, and the asyncio programs that run
on it with the same results as on asyncio's own loop, under every supported Python found.

The parts are tested in this process (pytest runs no event loop of its own); the programs of
tests/test_10_programs.py run in a subprocess of each interpreter; the lesson's echo server
runs through the harness like every lesson.
"""

import asyncio
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import harness

HERE = Path(__file__).resolve().parent


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


programs = _load("lesson10_programs", HERE / "test_10_programs.py")
lesson = programs.load_lesson()


@pytest.fixture
def loop():
    loop = lesson.EpollEventLoop()
    yield loop
    loop.close()


# -- 1. callbacks --------------------------------------------------------------------------

def test_callbacks_run_in_order_and_a_callbacks_own_call_soon_waits_a_pass(loop):
    log = []

    def first():
        log.append("first")
        loop.call_soon(log.append, "scheduled by first")
    loop.call_soon(first)
    loop.call_soon(log.append, "second")
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert log == ["first", "second"]  # stop ends the pass; what first scheduled waits
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert log == ["first", "second", "scheduled by first"]


def test_a_cancelled_callback_does_not_run_and_a_broken_one_does_not_stop_the_loop(loop):
    log, errors = [], []
    loop.set_exception_handler(lambda loop, context: errors.append(context["exception"]))
    loop.call_soon(log.append, "cancelled").cancel()
    loop.call_soon(lambda: 1 / 0)
    loop.call_soon(log.append, "after the error")
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert log == ["after the error"] and [type(e) for e in errors] == [ZeroDivisionError]


# -- 2. timers -----------------------------------------------------------------------------

class CountingEpoll:
    """The loop's epoll object, counting the loop's passes (its epoll_wait calls)."""

    def __init__(self, epoll):
        self.epoll, self.timeouts = epoll, []

    def poll(self, timeout=-1):
        self.timeouts.append(timeout)
        return self.epoll.poll(timeout)

    def __getattr__(self, name):
        return getattr(self.epoll, name)


def test_timers_fire_in_time_order_and_cancelled_ones_never(loop):
    log = []
    began = loop.time()
    for delay in (0.06, 0.02, 0.04):
        timer = loop.call_later(delay, lambda d=delay: log.append((d, loop.time() - began)))
    loop.call_later(0.03, log.append, "cancelled").cancel()
    loop.call_at(timer.when(), log.append, "cancelled").cancel()  # due with the 0.04 one
    loop.call_at(began + 0.08, loop.stop)
    loop.run_forever()
    assert [d for d, _ in log] == [0.02, 0.04, 0.06]
    assert all(late >= d for d, late in log), log  # never early


def test_waiting_for_a_timer_sleeps_in_epoll_wait(loop):
    # The epoll_wait timeout comes from the nearest timer: a loop that polled instead
    # (timeout 0) would call it thousands of times while it waits.
    loop._epoll = counting = CountingEpoll(loop._epoll)
    loop.call_later(0.3, loop.stop)
    began = time.monotonic()
    loop.run_forever()
    assert 0.3 <= time.monotonic() - began < 2.0
    assert len(counting.timeouts) <= 3, f"{len(counting.timeouts)} calls to epoll_wait"
    assert 0.25 < counting.timeouts[0] <= 0.3


def test_timers_already_due_run_at_once_without_a_negative_timeout(loop):
    # A timer whose time has passed gives a negative "time until it is due"; epoll_wait
    # takes any negative timeout as "forever", so the loop must floor it at 0. This test
    # never lets a negative timeout reach the kernel: it would hang rather than fail.
    class NoForever(CountingEpoll):
        def poll(self, timeout=-1):
            assert timeout >= 0, f"epoll_wait got the timeout {timeout} with a timer due"
            return super().poll(timeout)
    loop._epoll = counting = NoForever(loop._epoll)
    log = []
    loop.call_at(loop.time() - 1, log.append, "a second ago")
    loop.call_at(loop.time(), log.append, "now")
    loop.call_at(loop.time(), loop.stop)
    loop.run_forever()
    assert log == ["a second ago", "now"] and counting.timeouts == [0], counting.timeouts


def test_a_cancelled_timer_does_not_wake_the_loop(loop):
    # A cancelled timer left at the front of the heap would cut the sleep short.
    loop.call_later(0.01, loop.stop).cancel()
    loop.call_later(0.2, loop.stop)
    loop._epoll = counting = CountingEpoll(loop._epoll)
    loop.run_forever()
    assert len(counting.timeouts) == 1 and counting.timeouts[0] > 0.1, counting.timeouts


# -- 3. readers and writers ----------------------------------------------------------------

def test_a_reader_fires_while_data_waits_and_stops_when_removed(loop):
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        got = []

        def on_readable():
            got.append(a.recv(1))  # one byte a time: level-triggered, it fires again
            if len(got) == 3:
                assert loop.remove_reader(a)
                loop.call_soon(loop.stop)
        loop.add_reader(a, on_readable)
        loop.call_later(5, loop.stop)  # a bound
        b.send(b"xyz!")
        loop.run_forever()
        assert got == [b"x", b"y", b"z"] and not loop.remove_reader(a)


def test_a_writer_fires_while_there_is_room(loop):
    a, b = socket.socketpair()
    with a, b:
        fired = []

        def on_writable():
            fired.append(b.send(b"x"))
            loop.remove_writer(b.fileno())
            loop.stop()
        loop.add_writer(b.fileno(), on_writable)
        loop.call_later(5, loop.stop)  # a bound
        loop.run_forever()
        assert fired == [1] and a.recv(1) == b"x"


def test_a_signal_handler_runs_in_the_loop(loop):
    got = []
    loop.add_signal_handler(signal.SIGUSR1, lambda: got.append("USR1") or loop.stop())
    try:
        loop.call_later(0.05, os.kill, os.getpid(), signal.SIGUSR1)
        loop.call_later(5, loop.stop)  # a bound, in case the signal never wakes it
        loop.run_forever()
    finally:
        assert loop.remove_signal_handler(signal.SIGUSR1)
    assert got == ["USR1"]
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL


def test_call_soon_threadsafe_wakes_a_sleeping_loop(loop):
    loop.call_later(5, loop.stop)  # a bound
    thread = threading.Timer(0.05, loop.call_soon_threadsafe, args=(loop.stop,))
    began = time.monotonic()
    thread.start()
    loop.run_forever()
    thread.join()
    assert time.monotonic() - began < 2


# -- 4. coroutines -------------------------------------------------------------------------

def test_run_until_complete_runs_asyncio_tasks_on_this_loop(loop):
    async def main():
        assert asyncio.get_running_loop() is loop
        task = asyncio.ensure_future(asyncio.sleep(0.01, "slept"))
        return await task, type(task).__name__
    assert loop.run_until_complete(main()) == ("slept", "Task")
    assert not loop.is_running() and asyncio._get_running_loop() is None


def test_what_is_not_implemented_says_so_by_name(loop):
    async def main():
        await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    with pytest.raises(NotImplementedError, match=r"EpollEventLoop\.create_server\(\)"):
        loop.run_until_complete(main())
    with pytest.raises(NotImplementedError, match=r"run_in_executor"):
        loop.run_in_executor(None, print)


def test_a_closed_loop_refuses_work_and_leaks_no_fd():
    before = set(os.listdir("/proc/self/fd"))
    loop = lesson.EpollEventLoop()
    a, b = socket.socketpair()
    loop.add_reader(a, print)
    loop.remove_reader(a)
    a.close(), b.close()
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()
    loop.close()  # twice is fine
    assert set(os.listdir("/proc/self/fd")) == before
    with pytest.raises(RuntimeError, match="closed"):
        loop.call_soon(print)
    with pytest.raises(RuntimeError, match="closed"):
        loop.run_forever()


def test_no_fd_left_after_an_echo_of_many_clients_and_a_cancelled_server():
    before = set(os.listdir("/proc/self/fd"))
    assert lesson.run(programs.echo_serves_200_concurrent_clients()) == "200 of 200 echoed whole"

    async def cancelled_while_waiting():
        loop = asyncio.get_running_loop()
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            listener.setblocking(False)
            accepting = asyncio.ensure_future(loop.sock_accept(listener))
            await asyncio.sleep(0.01)
            accepting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await accepting
            return len(loop._interest)  # only the self-pipe is still registered
    assert lesson.run(cancelled_while_waiting()) == 1
    assert set(os.listdir("/proc/self/fd")) == before


# -- the programs, on both loops, under every supported Python found here -----------------

INTERPRETERS = programs.interpreters()


@pytest.mark.parametrize("version, python", INTERPRETERS, ids=[v for v, _ in INTERPRETERS])
def test_asyncio_programs_give_the_same_results_on_both_loops(version, python):
    result = subprocess.run([python, str(HERE / "test_10_programs.py")], capture_output=True,
                            text=True, timeout=120, cwd=HERE.parent)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["loops"] == {"epoll": ["EpollEventLoop"], "asyncio": ["_UnixSelectorEventLoop"]}
    assert ".".join(map(str, found["python"])) == version
    assert found["epoll"] == found["asyncio"]
    # The columns agree; and they say what asyncio promises (not, say, both failing alike).
    seen = found["epoll"]
    assert seen["sleep_ordering"] == ["zero", "a", "a2", "b", "c"]
    assert seen["gather_results_and_exceptions"] == [
        "2", "4", "ValueError('broken on purpose')", "ValueError: broken on purpose"]
    assert seen["wait_for_timeout_cancels_the_inner_task"] == [
        "inner cancelled", "timed out", "in time"]
    assert seen["cancellation_runs_finally_and_reaches_the_awaiter"] == [
        "started", "cleaned up", "awaiter saw CancelledError", "cancelled=True"]
    assert [e for e in seen["queue_producer_consumer"] if e.startswith("got")] == \
        [f"got {i}" for i in range(5)]
    assert seen["event_wakes_every_waiter_in_order"] == ["set", "woke 0", "woke 1", "woke 2"]
    assert seen["lock_serialises_critical_sections"] == [
        f"{what} {i}" for i in range(3) for what in ("enter", "leave")]
    assert seen["shield_keeps_the_inner_task_running"] == [
        "outer cancelled", "inner finished", "inner result"]
    assert seen["exceptions_from_tasks"] == [
        "caught KeyError(1)", "KeyError(1)",
        "Task exception was never retrieved: Task KeyError(2)",
        "Exception in: Handle ZeroDivisionError('division by zero')"]
    assert seen["async_generator_closed_after_break"] == [0, 1, 2, "generator closed"]
    assert seen["echo_serves_200_concurrent_clients"] == "200 of 200 echoed whole"




# -- the lesson's echo server --------------------------------------------------------------

@pytest.mark.parametrize("loop_name", ["epoll", "asyncio"])
def test_the_echo_serves_200_clients_at_once_on_either_loop(start, loop_name):
    server = start("10_event_loop.py", "--loop", loop_name)
    payloads = [os.urandom(100 + 37 * i) for i in range(200)]
    assert harness.exchange(server.address, payloads) == payloads
    assert server.asleep_in_epoll()
    assert server.stop() == 0 and "Traceback" not in server.output()


def test_trace_shows_accepts_wakes_and_closes(start):
    server = start("10_event_loop.py", "--trace")
    with server.connect() as sock:
        harness.send_all(sock, b"hello")
        assert harness.recv_exactly(sock, 5) == b"hello"
        fd = harness.accepted_fds([server.wait_for_line("accept fd")])
    server.wait_for_line("close fd")
    assert len(fd) == 1 and harness.reports_for(server.lines, fd[0], "IN") >= 1
    assert f"close fd {fd[0]}: client finished" in server.lines


@pytest.mark.parametrize("loop_name", ["epoll", "asyncio"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_client_still_connected_when_the_server_stops_is_closed_for_that(start, loop_name,
                                                                          signum):
    # Ctrl-C cancels the client's task: the trace says the server is stopping, as every
    # lesson does, not that the client finished (it did not).
    server = start("10_event_loop.py", "--trace", "--loop", loop_name)
    with server.connect() as sock:
        harness.send_all(sock, b"hello")
        assert harness.recv_exactly(sock, 5) == b"hello"
        fd = harness.accepted_fds([server.wait_for_line("accept fd")])
        harness.wait_in_epoll_wait(server)
        assert server.stop(signum) == 0, server.output()
    assert f"close fd {fd[0]}: server stopping" in server.lines, server.output()
    assert not any("client finished" in line for line in server.lines), server.output()


# -- the exercise's check: it names the part that is missing -------------------------------

def _load_check():
    name = "lesson10_exercise_check"  # a dataclass needs its module in sys.modules
    spec = importlib.util.spec_from_file_location(name, HERE.parent / "exercises" / "check.py")
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return next(ex for ex in module.load_exercises() if ex.name.startswith("10_"))


SOLUTION = (HERE.parent / "solutions" / "10_call_later.py").read_text(encoding="utf-8")
TIMEOUT = "timeout = min(max(0.0, self._scheduled[0][0] - self.time()), MAX_SLEEP)"
POP = "self._ready.append(heapq.heappop(self._scheduled)[2])  # due: run in this pass"
PUSH = "heapq.heappush(self._scheduled, (when, next(self._sequence), timer))"


@pytest.mark.parametrize("answer, wrong, says", [
    (TIMEOUT, "timeout = self._scheduled[0][0] - self.time()",
     ["the loop slept past a timer that was already due",
      "a negative timeout means 'forever' to epoll_wait"]),
    (TIMEOUT, "timeout = -1", ["with no timeout (-1, 'forever') while a timer was waiting"]),
    (TIMEOUT, "timeout = 1.0", ["ran late"]),
    (POP, "break", ["never ran a timer that was due"]),
    (PUSH, "pass", ["call_later never runs the callback"]),
], ids=["no floor at 0", "no timeout", "a fixed timeout", "no pop", "no push"])
def test_the_exercise_check_says_which_part_is_wrong(tmp_path, answer, wrong, says):
    assert SOLUTION.count(answer) == 1
    exercise = _load_check()
    (tmp_path / exercise.name).write_text(SOLUTION.replace(answer, wrong), encoding="utf-8")
    began = time.monotonic()
    ok, detail = exercise.run(tmp_path)
    assert not ok and all(part in detail.splitlines()[0] for part in says), detail
    assert time.monotonic() - began < 20  # a loop that would sleep forever is stopped

