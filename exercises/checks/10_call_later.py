"""Exercise 10: call_later, the timer heap and the epoll_wait timeout (lesson 10's loop)."""

import json
import subprocess
import sys

import hostile

EXERCISE = "10_call_later.py"
HOSTILE = hostile.tcp_echo  # the lesson's rude clients, run after check() passes
TITLE = "lesson 10: call_later, the timer heap and the epoll_wait timeout"
HINT = ("In call_at, heapq.heappush(self._scheduled, (when, next(self._sequence), timer)). In "
        "_run_once, with timers waiting, timeout = min(max(0.0, self._scheduled[0][0] - "
        "self.time()), MAX_SLEEP); after epoll_wait, pop each timer whose time is <= now and "
        "append its handle to self._ready.")

MOST_PASSES = 10  # epoll_wait calls one asyncio.sleep may take: about 3, a poll takes 1000s

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


def timers_in_order(loop):
    fired, began = [], loop.time()
    for delay in (0.09, 0.03, 0.06):
        timer = loop.call_later(delay, lambda d=delay: fired.append([d, loop.time() - began]))
    loop.call_later(0.045, fired.append, "cancelled").cancel()
    loop.call_at(timer.when(), fired.append, "cancelled").cancel()  # due with the 0.06 one
    loop.call_later(0.12, loop.stop)
    loop.run_forever()
    return fired


class CountingEpoll:  # the loop's epoll object, counting its epoll_wait calls

    def __init__(self, epoll):
        self.epoll, self.polls = epoll, 0

    def poll(self, timeout=-1):
        self.polls += 1
        return self.epoll.poll(timeout)

    def __getattr__(self, name):
        return getattr(self.epoll, name)


def asleep_while_waiting(loop):
    loop._epoll = counting = CountingEpoll(loop._epoll)
    began = time.monotonic()
    loop.run_until_complete(asyncio.sleep(0.3))
    return [time.monotonic() - began, counting.polls]


def wait_for_times_out(loop):
    async def main():
        try:
            await asyncio.wait_for(asyncio.sleep(10), 0.05)
        except asyncio.TimeoutError:
            return "timed out"
        return "not timed out"
    return loop.run_until_complete(main())


for program in (timers_in_order, asleep_while_waiting, wait_for_times_out):
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
    if seen == "hung":  # the loop is stuck inside run_forever: it cannot even be closed
        break
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


def check(script):
    seen = run_programs(script)
    fired = seen["timers_in_order"]
    if fired == "hung":
        raise AssertionError(
            "loop.call_later(0.12, loop.stop) never stopped the loop (stopped after 2 s): is "
            "each timer pushed on the heap in call_at, is the epoll_wait timeout the time to "
            "the nearest timer, and are the due timers moved to self._ready?")
    if isinstance(fired, str):
        raise AssertionError(f"call_later on your loop {fired}")
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
    return (f"timers fired in order, none early, cancelled ones never; asyncio.sleep(0.3) "
            f"slept in epoll_wait ({polls} passes of the loop); wait_for timed out")
