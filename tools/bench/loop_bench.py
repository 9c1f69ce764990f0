#!/usr/bin/env python3
"""What each layer of an event loop costs, on one echo load (lesson 10).

The same ping-pong load (64-byte messages on 20 connections, each waiting for its echo
before it sends the next) against each server in turn; the figure is the server's CPU time
per message, which does not depend on how fast the client is:

    lesson 02          edge-triggered epoll, handlers called straight from the loop
    10 callbacks       lesson 10's loop, an echo written with add_reader/add_writer
    10 coroutines      lesson 10's script: loop.sock_* coroutines on lesson 10's loop
    asyncio sock_*     the same coroutines on asyncio's own loop (lesson 10 --loop asyncio)
    asyncio streams    the same echo written with asyncio streams, on asyncio's loop
    uvloop sock_*      lesson 10's coroutines on uvloop (only where uvloop is installed)

    .venv/bench/bin/python tools/bench/loop_bench.py [--messages 20000] [--rounds 3]

A benchmark, not a test: it prints numbers and asserts nothing about them; they depend on
the machine and on what else it runs. This file is also the servers that lesson 10 has no
flag for, each with the lessons' readiness line (notebook 10 measures some of them):

    python3 tools/bench/loop_bench.py --serve callbacks|streams|uvloop [--host H] [--port P]
"""

import argparse
import asyncio
import importlib.util
import os
import select
import signal
import socket
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT / "notebooks"))

MESSAGE = 64  # bytes per message
CONNECTIONS = 20


def load_lesson():
    spec = importlib.util.spec_from_file_location("event_loop_lesson",
                                                  ROOT / "lessons" / "10_event_loop.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- the servers lesson 10 has no flag for ----------------------------------------------------

def listening(host, port):
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(1024)
    listener.setblocking(False)
    return listener


def serve_callbacks(listener):
    """An echo on lesson 10's loop with callbacks only: no Future, no Task."""
    lesson = load_lesson()
    loop = lesson.EpollEventLoop()
    outboxes = {}

    def on_accept():
        try:
            sock, _ = listener.accept()
        except (BlockingIOError, ConnectionAbortedError):
            return
        sock.setblocking(False)
        outboxes[sock] = bytearray()
        loop.add_reader(sock, on_readable, sock)

    def close(sock):
        loop.remove_reader(sock)
        loop.remove_writer(sock)
        del outboxes[sock]
        sock.close()

    def on_readable(sock):
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            return close(sock)
        if not data:
            return close(sock)
        outboxes[sock] += data
        on_writable(sock)

    def on_writable(sock):
        outbox = outboxes[sock]
        try:
            del outbox[:sock.send(outbox)]
        except BlockingIOError:
            pass
        except OSError:
            return close(sock)
        if outbox:
            loop.add_writer(sock, on_writable, sock)
        else:
            loop.remove_writer(sock)

    loop.add_reader(listener, on_accept)
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, loop.stop)
    print(f"listening on {listener.getsockname()[0]}:{listener.getsockname()[1]}", flush=True)
    loop.run_forever()
    for sock in list(outboxes):
        close(sock)
    loop.close()


async def serve_streams(listener):
    """The same echo with asyncio streams (StreamReader, StreamWriter) on asyncio's loop."""
    async def echo(reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()
    loop = asyncio.get_running_loop()
    stopping = loop.create_future()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set_result, None)
    server = await asyncio.start_server(echo, sock=listener)
    print(f"listening on {listener.getsockname()[0]}:{listener.getsockname()[1]}", flush=True)
    async with server:
        await stopping


def serve(kind, host, port):
    listener = listening(host, port)
    if kind == "callbacks":
        serve_callbacks(listener)
    elif kind == "streams":
        asyncio.run(serve_streams(listener))
    else:
        import uvloop  # only in the benchmarks' environment, .venv/bench
        uvloop.run(load_lesson().serve(listener))


# -- the load -----------------------------------------------------------------------------------

def ping_pong(address, messages, connections=CONNECTIONS, timeout=60.0):
    """Send `messages` messages in all, one in flight per connection, each answered by its
    echo before the next; every echo checked. Returns the seconds it took."""
    payload = bytes(range(MESSAGE))
    socks = [socket.create_connection(address, timeout=timeout) for _ in range(connections)]
    poller = select.epoll()
    try:
        owed, sent = {}, 0
        for sock in socks:
            sock.setblocking(False)
            poller.register(sock, select.EPOLLIN)
        began = time.monotonic()
        for sock in socks:
            sock.send(payload)  # 64 bytes into an empty buffer: taken whole
            owed[sock.fileno()] = bytearray()
            sent += 1
        answered = 0
        by_fd = {sock.fileno(): sock for sock in socks}
        while answered < sent:
            if time.monotonic() - began > timeout:
                raise TimeoutError(f"{answered} of {messages} echoes in {timeout:g} s")
            for fd, _ in poller.poll(1.0):
                got = owed[fd]
                got += by_fd[fd].recv(4096)
                if len(got) < MESSAGE:
                    continue
                if got != payload:
                    raise AssertionError("an echo came back altered")
                got.clear()
                answered += 1
                if sent < messages:
                    by_fd[fd].send(payload)
                    sent += 1
        return time.monotonic() - began
    finally:
        poller.close()
        for sock in socks:
            sock.close()


def cpu_ns(pid):
    """Nanoseconds a process has run on a CPU: the scheduler's own count, first field of
    /proc/PID/schedstat (the clock-tick count of /proc/PID/stat is too coarse here)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


def cpu_per_message(server, messages):
    """Microseconds of the server's CPU per echoed message, over one run of the load."""
    ping_pong(server.address, 200)  # warm-up: connections made and closed once
    before = cpu_ns(server.pid)
    ping_pong(server.address, messages)
    return (cpu_ns(server.pid) - before) / messages / 1000


# -- the benchmark ------------------------------------------------------------------------

HERE = Path(__file__).resolve()
SERVERS = [
    ("lesson 02", ["02_et_echo.py"]),
    ("10 callbacks", [HERE, "--serve", "callbacks"]),
    ("10 coroutines", ["10_event_loop.py"]),
    ("asyncio sock_*", ["10_event_loop.py", "--loop", "asyncio"]),
    ("asyncio streams", [HERE, "--serve", "streams"]),
    ("uvloop sock_*", [HERE, "--serve", "uvloop"]),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", choices=["callbacks", "streams", "uvloop"],
                        help="run one of the servers above instead of the benchmark")
    parser.add_argument("--host", default="127.0.0.1", help="with --serve")
    parser.add_argument("--port", type=int, default=0, help="with --serve")
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.serve:
        return serve(args.serve, args.host, args.port)

    import harness
    try:
        import uvloop  # noqa: F401
        servers = SERVERS
    except ImportError:
        servers = SERVERS[:-1]
        print("uvloop is not installed here: its row is left out (make bench installs it)")
    print(f"loop layers: {args.messages} messages of {MESSAGE} bytes on {CONNECTIONS} "
          f"connections, {args.rounds} rounds; load average {os.getloadavg()[0]:.1f}")
    costs = {name: [] for name, _ in servers}
    running = {name: harness.start(*argv) for name, argv in servers}
    try:
        for _ in range(args.rounds):
            for name, server in running.items():
                costs[name].append(cpu_per_message(server, args.messages))
    finally:
        for server in running.values():
            server.stop()
    base = statistics.median(costs["lesson 02"])
    print(f"{'server':<18}{'CPU us/message':>16}{'lowest-highest':>18}{'x lesson 02':>13}")
    for name, figures in costs.items():
        mid = statistics.median(figures)
        print(f"{name:<18}{mid:>16.1f}{f'{min(figures):.1f}-{max(figures):.1f}':>18}"
              f"{mid / base:>12.1f}x")
    print(f"load average {os.getloadavg()[0]:.1f} at the end: a busy machine raises every figure")


if __name__ == "__main__":
    main()
