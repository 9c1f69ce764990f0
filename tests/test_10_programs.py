"""Unmodified asyncio programs, for lesson 10's loop and asyncio's own: no tests here.

Each program below is plain asyncio code: it never names a loop. The file is a script that
needs nothing but the standard library, so any supported interpreter can run it:

    python3 tests/test_10_programs.py     # every program on both loops, as JSON

On lesson 10's loop a program runs through the lesson's run() (asyncio.Runner with
loop_factory on 3.11+, run_until_complete on 3.10); on asyncio's own, through asyncio.run.
tests/test_10_event_loop.py runs it under every supported Python found here and compares
the two columns.
"""

import asyncio
import gc
import glob
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LESSON = ROOT / "lessons" / "10_event_loop.py"
PROGRAMS = []


def program(function):
    PROGRAMS.append(function)
    return function


# -- the programs: each returns what it saw, in a form JSON can carry ------------------------

@program
async def sleep_ordering():
    order = []

    async def sleeper(name, delay):
        await asyncio.sleep(delay)
        order.append(name)
    await asyncio.gather(*(sleeper(name, delay) for name, delay in
                           [("c", 0.03), ("a", 0.01), ("zero", 0), ("b", 0.02), ("a2", 0.01)]))
    return order


@program
async def gather_results_and_exceptions():
    async def value(x):
        await asyncio.sleep(0)
        return x * 2

    async def broken():
        raise ValueError("broken on purpose")
    results = await asyncio.gather(value(1), value(2), broken(), return_exceptions=True)
    try:
        await asyncio.gather(value(3), broken())
        first = "no exception"
    except ValueError as e:
        first = f"ValueError: {e}"
    return [repr(r) for r in results] + [first]


@program
async def wait_for_timeout_cancels_the_inner_task():
    seen = []

    async def slow():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            seen.append("inner cancelled")
            raise
    try:
        await asyncio.wait_for(slow(), timeout=0.05)
    except asyncio.TimeoutError:
        seen.append("timed out")
    seen.append(await asyncio.wait_for(asyncio.sleep(0.01, "in time"), timeout=5))
    return seen


@program
async def cancellation_runs_finally_and_reaches_the_awaiter():
    log = []

    async def worker():
        try:
            log.append("started")
            await asyncio.sleep(10)
        finally:
            log.append("cleaned up")
    task = asyncio.ensure_future(worker())
    await asyncio.sleep(0)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        log.append("awaiter saw CancelledError")
    log.append(f"cancelled={task.cancelled()}")
    return log


@program
async def queue_producer_consumer():
    queue, log = asyncio.Queue(maxsize=2), []

    async def producer():
        for i in range(5):
            await queue.put(i)
            log.append(f"put {i}")
        await queue.put(None)

    async def consumer():
        while (item := await queue.get()) is not None:
            log.append(f"got {item}")
            await asyncio.sleep(0)
    await asyncio.gather(producer(), consumer())
    return log


@program
async def event_wakes_every_waiter_in_order():
    event, log = asyncio.Event(), []

    async def waiter(i):
        await event.wait()
        log.append(f"woke {i}")
    tasks = [asyncio.ensure_future(waiter(i)) for i in range(3)]
    await asyncio.sleep(0.01)
    log.append("set")
    event.set()
    await asyncio.gather(*tasks)
    return log


@program
async def lock_serialises_critical_sections():
    lock, log = asyncio.Lock(), []

    async def worker(i):
        async with lock:
            log.append(f"enter {i}")
            await asyncio.sleep(0.001)
            log.append(f"leave {i}")
    await asyncio.gather(*(worker(i) for i in range(3)))
    return log


@program
async def shield_keeps_the_inner_task_running():
    log = []

    async def inner():
        await asyncio.sleep(0.02)
        log.append("inner finished")
        return "inner result"
    task = asyncio.ensure_future(inner())
    outer = asyncio.ensure_future(asyncio.shield(task))
    await asyncio.sleep(0)
    outer.cancel()
    try:
        await outer
    except asyncio.CancelledError:
        log.append("outer cancelled")
    log.append(await task)
    return log


@program
async def exceptions_from_tasks():
    loop = asyncio.get_running_loop()
    reported = []
    # asyncio names a callback in its own words ("... at FILE:LINE"): kept are the kind of
    # message, what it is about (a Task, a Handle) and the exception.
    loop.set_exception_handler(lambda loop, context: reported.append(
        f"{context['message'].split(' callback')[0]}: "
        f"{type(context.get('future', context.get('handle'))).__name__} {context['exception']!r}"))

    async def fails(n):
        await asyncio.sleep(0)
        raise KeyError(n)
    task = asyncio.ensure_future(fails(1))
    try:
        await task
    except KeyError as e:
        caught = f"caught {e!r}"
    forgotten = asyncio.ensure_future(fails(2))
    await asyncio.sleep(0.01)
    del forgotten  # never retrieved: the loop's exception handler hears of it
    gc.collect()
    loop.call_soon(lambda: 1 / 0)  # a callback's error goes to the handler too
    await asyncio.sleep(0.01)
    return [caught, repr(task.exception())] + reported


@program
async def async_generator_closed_after_break():
    log = []

    async def numbers():
        try:
            for i in range(10):
                yield i
                await asyncio.sleep(0)
        finally:
            log.append("generator closed")
    async for i in numbers():
        log.append(i)
        if i == 2:
            break
    await asyncio.sleep(0.01)
    return log


@program
async def echo_serves_200_concurrent_clients():
    loop = asyncio.get_running_loop()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(256)
    listener.setblocking(False)
    handlers = set()

    async def echo(sock):
        with sock:
            while data := await loop.sock_recv(sock, 65536):
                await loop.sock_sendall(sock, data)

    async def accept(count):
        for _ in range(count):
            sock, _ = await loop.sock_accept(listener)
            handlers.add(asyncio.ensure_future(echo(sock)))

    async def client(i):
        payload = f"client {i} ".encode() * (1 + i * 50)
        with socket.socket() as sock:
            sock.setblocking(False)
            await loop.sock_connect(sock, listener.getsockname())
            await loop.sock_sendall(sock, payload)
            sock.shutdown(socket.SHUT_WR)
            got = bytearray()
            while chunk := await loop.sock_recv(sock, 65536):
                got += chunk
        return bytes(got) == payload
    with listener:
        accepting = asyncio.ensure_future(accept(200))
        results = await asyncio.wait_for(asyncio.gather(*(client(i) for i in range(200))), 30)
        await accepting
        await asyncio.gather(*handlers)
    return f"{sum(results)} of {len(results)} echoed whole"


# -- running them --------------------------------------------------------------------------

def load_lesson():
    spec = importlib.util.spec_from_file_location("event_loop_lesson", LESSON)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_all():
    """{"epoll": {program: result}, "asyncio": {...}, "loops": {...}} for this interpreter."""
    lesson = load_lesson()
    found = {"python": list(sys.version_info[:2]), "loops": {}}
    for name, run in (("epoll", lesson.run), ("asyncio", asyncio.run)):
        results, loops = {}, set()
        for function in PROGRAMS:
            async def main():
                loops.add(type(asyncio.get_running_loop()).__name__)
                return await function()
            try:
                results[function.__name__] = run(main())
            except Exception as e:  # a program that fails shows how, in the column
                results[function.__name__] = f"raised {e!r}"
        found[name], found["loops"][name] = results, sorted(loops)
    return found


def interpreters():
    """[(version, path)]: one interpreter for each supported Python found here (this one,
    python3.1N on PATH, pyenv's)."""
    found = {tuple(sys.version_info[:2]): sys.executable}
    candidates = [shutil.which(f"python3.{minor}") for minor in range(10, 14)]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.1[0-3].*/bin/python3")))
    for path in filter(None, candidates):
        try:
            version = subprocess.run([path, "-c", "import sys; print(*sys.version_info[:2])"],
                                     capture_output=True, text=True, timeout=10).stdout.split()
        except (OSError, subprocess.TimeoutExpired):
            continue
        if len(version) == 2:
            found.setdefault(tuple(map(int, version)), path)
    return [(f"{major}.{minor}", found[major, minor]) for major, minor in sorted(found)
            if (3, 10) <= (major, minor) <= (3, 13)]


if __name__ == "__main__":
    print(json.dumps(run_all()))
