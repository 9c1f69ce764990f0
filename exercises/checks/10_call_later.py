"""Exercise 10: call_later, the timer heap and the epoll_wait timeout (lesson 10's loop)."""

import json
import subprocess
import sys

import hostile

EXERCISE = "10_call_later.py"
HOSTILE = hostile.tcp_echo  # the lesson's rude clients, run after check() passes
TITLE = "lesson 10: call_later, the timer heap and the epoll_wait timeout"
HINT = ("Three places, in call_at() and _run_once(): a timer goes on the heap self._scheduled, "
        "ordered by its time with self._sequence to break ties; epoll_wait sleeps only until "
        "the nearest timer is due; and after the wait every timer that is due moves to "
        "self._ready. Mind the timeout's two ends: a timer already due gives a negative "
        "number, and a negative timeout means forever to epoll_wait, so never below 0, and "
        "never above MAX_SLEEP. The check's message says which part is missing: a heap that "
        "stays empty, a loop that slept with no timeout or past a due timer, or one that woke "
        "again and again without running a timer. Stuck: solutions/10_call_later.py has the "
        "answer beside the starting point's lines.")

MOST_PASSES = 10  # epoll_wait calls one asyncio.sleep may take: about 3, a poll takes 1000s
LATE = 0.5  # a timer later than this ran late (a busy machine delays one by milliseconds)

# The timing programs, run in a Python of their own (a program that hangs is stopped by an
# alarm). Each prints one JSON line: what it saw, or what went wrong.
PROGRAMS = r"""
import asyncio, importlib.util, json, signal, sys, time

spec = importlib.util.spec_from_file_location("exercise", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)


class Hung(Exception):
    pass


def alarm(*_):
    raise Hung()


signal.signal(signal.SIGALRM, alarm)


class CountingEpoll:  # the loop's epoll object, counting its epoll_wait calls and timeouts

    def __init__(self, epoll):
        self.epoll, self.timeouts = epoll, []

    def poll(self, timeout=-1):
        self.timeouts.append(timeout)
        return self.epoll.poll(timeout)

    def __getattr__(self, name):
        return getattr(self.epoll, name)


def counted(loop):
    loop._epoll = counting = CountingEpoll(loop._epoll)
    return counting


def timer_on_the_heap(loop):
    timer = loop.call_later(10, print)
    on_heap = len(loop._scheduled)
    timer.cancel()
    return on_heap


def timers_in_order(loop):
    counting, fired, began = counted(loop), [], loop.time()
    for delay in (0.09, 0.03, 0.06):
        timer = loop.call_later(delay, lambda d=delay: fired.append([d, loop.time() - began]))
    loop.call_later(0.045, fired.append, "cancelled").cancel()
    loop.call_at(timer.when(), fired.append, "cancelled").cancel()  # due with the 0.06 one
    loop.call_later(0.12, loop.stop)
    try:
        loop.run_forever()
    except Hung:
        return {"hung": True, "fired": fired, "timeouts": counting.timeouts[-3:],
                "polls": len(counting.timeouts)}
    return {"fired": fired}


def timers_already_due(loop):  # one due a second ago, one due now, then stop
    counting, fired = counted(loop), []
    loop.call_at(loop.time() - 1, fired.append, "a second ago")
    loop.call_at(loop.time(), fired.append, "now")
    loop.call_at(loop.time(), loop.stop)
    try:
        loop.run_forever()
    except Hung:
        return {"hung": True, "fired": fired, "timeouts": counting.timeouts[:3],
                "polls": len(counting.timeouts)}
    return {"fired": fired}


def asleep_while_waiting(loop):
    counting = counted(loop)
    began = time.monotonic()
    loop.run_until_complete(asyncio.sleep(0.3))
    return [time.monotonic() - began, len(counting.timeouts)]


def wait_for_times_out(loop):
    async def main():
        try:
            await asyncio.wait_for(asyncio.sleep(10), 0.05)
        except asyncio.TimeoutError:
            return "timed out"
        return "not timed out"
    return loop.run_until_complete(main())


for program in (timer_on_the_heap, timers_already_due, timers_in_order, asleep_while_waiting,
                wait_for_times_out):
    loop = module.EpollEventLoop()
    signal.setitimer(signal.ITIMER_REAL, 2.0)
    try:
        seen = program(loop)
    except Hung:
        seen = "hung"
    except Exception as e:
        seen = f"raised {type(e).__name__}: {e}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    print(json.dumps([program.__name__, seen]), flush=True)
    if isinstance(seen, dict) and seen.get("hung") or seen == "hung":
        break  # the loop is stuck inside run_forever: it cannot even be closed
    loop.close()
"""


def run_programs(script):
    result = subprocess.run([sys.executable, "-c", PROGRAMS, str(script)], capture_output=True,
                            text=True, timeout=30, stdin=subprocess.DEVNULL)
    seen = dict(json.loads(line) for line in result.stdout.splitlines() if line.startswith("["))
    if not seen:
        lines = result.stderr.strip().splitlines()
        raise AssertionError("the timing programs could not run on your loop: "
                             + (lines[-1] if lines else f"exit status {result.returncode}"))
    return seen


def stuck(what, seen):
    """Why a loop that was stopped by the alarm after 2 s never ran its timers: what it asked
    epoll_wait for tells which part is missing."""
    timeouts, polls = seen["timeouts"], seen["polls"]
    last = timeouts[-1] if timeouts else None
    if polls > MOST_PASSES:
        return (f"{what}: the loop woke up {polls} times in 2 s but never ran a timer that "
                "was due (stopped after 2 s): after epoll_wait, move every timer whose time "
                "is <= now from the heap to self._ready")
    if last is not None and last < 0 and last != -1:
        return (f"{what}: the loop slept past a timer that was already due; epoll_wait "
                f"got a timeout of {last:.6f} s, and a negative timeout means 'forever' to "
                "epoll_wait (stopped after 2 s): never sleep below 0")
    if last == -1 or last is None:
        return (f"{what}: the loop slept in epoll_wait with no timeout (-1, 'forever') "
                "while a timer was waiting (stopped after 2 s): with timers in the heap, "
                "the timeout is the time until the nearest one")
    return (f"{what}: the loop slept in epoll_wait with a timeout of {last} s while the "
            "nearest timer was due much sooner (stopped after 2 s): the timeout is "
            "the time until the nearest timer is due, never below 0")


def check(script):
    seen = run_programs(script)
    on_heap = seen.get("timer_on_the_heap", "never ran")
    if isinstance(on_heap, str):
        raise AssertionError(f"loop.call_later(10, print) on your loop {on_heap}")
    if on_heap != 1:
        raise AssertionError(f"call_later never runs the callback: after "
                             f"loop.call_later(10, print) the heap self._scheduled holds "
                             f"{on_heap} timers, not 1: call_at must put the timer on "
                             "that heap")

    due = seen.get("timers_already_due", "never ran")
    if isinstance(due, str):
        raise AssertionError(f"loop.call_at(loop.time() - 1, ...) on your loop {due}")
    if due.get("hung"):
        raise AssertionError(stuck("a timer already due (loop.call_at(loop.time() - 1, ...)) "
                                   "never ran", due))
    if due["fired"] != ["a second ago", "now"]:
        raise AssertionError(f"timers already due (a second ago, then now) ran as "
                             f"{due['fired']}: each once, the oldest first")

    fired = seen.get("timers_in_order", "never ran")
    if isinstance(fired, str):
        raise AssertionError(f"call_later on your loop {fired}")
    if fired.get("hung"):
        raise AssertionError(stuck("loop.call_later(0.12, loop.stop) never stopped the loop",
                                   fired))
    fired = fired["fired"]
    if "cancelled" in fired:
        raise AssertionError("a timer that was cancelled still ran: skip cancelled handles")
    order = [delay for delay, _ in fired]
    if order != [0.03, 0.06, 0.09]:
        raise AssertionError(f"timers asked for 0.09, 0.03 and 0.06 s fired in the order "
                             f"{order}: the nearest first, each once")
    early = [(delay, late) for delay, late in fired if late < delay]
    if early:
        delay, late = early[0]
        raise AssertionError(f"a timer for {delay} s fired after {late:.3f} s: only timers "
                             "whose time has come (<= now) are due")
    late = [(delay, when) for delay, when in fired if when > delay + LATE]
    if late:
        delay, when = late[0]
        raise AssertionError(f"a timer for {delay} s ran late, after {when:.3f} s: sleep in "
                             "epoll_wait only until the nearest timer is due")

    slept = seen.get("asleep_while_waiting", "never ran")
    if not isinstance(slept, list):
        raise AssertionError(f"asyncio.sleep(0.3) on your loop: {slept}")
    waited, polls = slept
    if polls > MOST_PASSES:
        raise AssertionError(f"during asyncio.sleep(0.3) the loop called epoll_wait {polls} "
                             "times: it polled instead of sleeping; epoll_wait's timeout "
                             "should be the time until the nearest timer, not 0")
    if not 0.3 <= waited < 1.5:
        raise AssertionError(f"asyncio.sleep(0.3) took {waited:.3f} s")

    timed_out = seen.get("wait_for_times_out", "never ran")
    if timed_out != "timed out":
        raise AssertionError(f"asyncio.wait_for(asyncio.sleep(10), 0.05): {timed_out}")
    return (f"timers already due ran at once, the others in order, none early or late, "
            f"cancelled ones never; asyncio.sleep(0.3) slept in epoll_wait ({polls} passes "
            f"of the loop); wait_for timed out")
