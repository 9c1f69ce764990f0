"""The workbook's harness: start lesson servers, drive them with clients, stop them always.

Notebooks import it as `import harness` (the kernel runs in notebooks/); tests and the
exercise checker import it the same way. Everything here is bounded in time: no call can
wait forever, and every server started here is stopped, whatever happens.

    with harness.start("01_lt_echo.py") as server:
        with server.connect() as sock:
            harness.send_all(sock, b"hello")
            print(harness.recv_exactly(sock, 5))

Why the care with output: since ipykernel 6, whatever a subprocess writes to an inherited
stdout or stderr is forwarded to whichever notebook cell happens to be running. So a server's
output always goes to pipes that this module reads; a cell shows the lines it chooses.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import fcntl
import os
import select
import selectors
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LESSONS = ROOT / "lessons"

READY_TIMEOUT = 10.0  # seconds a server may take to print its readiness line
STOP_GRACE = 2.0  # seconds between SIGTERM and SIGKILL
IO_TIMEOUT = 10.0  # default bound for one client operation
QUIET = 0.3  # a connection silent this long is taken to have stalled

_PR_SET_PDEATHSIG = 1
_running: set["Server"] = set()
started: list["Server"] = []  # every server this process started, in order


class ServerFailed(RuntimeError):
    """A lesson server did not start; the message carries what it printed."""


class Stalled(TimeoutError):
    """A bounded wait ran out; `.received` holds what did arrive."""

    def __init__(self, message: str, received: bytes = b""):
        super().__init__(message)
        self.received = received


def _die_with_parent(parent: int):
    """What runs in the child between fork and exec: it dies with the process that started it.

    When the kernel (or pytest) that started a server dies, even by SIGKILL and with no
    atexit handler run, the kernel sends the server the parent-death signal. SIGKILL, not
    SIGTERM: a server stopped inside `paused()` keeps any other signal pending until it is
    continued, and nobody is left to continue it; SIGKILL ends a stopped process too. A
    server owns nothing that outlives it (the kernel closes its sockets), so nothing is lost.
    (The kernel ties this signal to the thread that started the server: start servers from
    a thread that lives as long as they should, as the main thread of a kernel or test does.)
    """
    def in_child() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except Exception:
            return
        if os.getppid() != parent:  # the parent died before prctl: no signal will come
            os._exit(1)
    return in_child


def script_path(script: str | os.PathLike) -> Path:
    """A lesson name like "01_lt_echo.py" means lessons/01_lt_echo.py; a path is a path."""
    path = Path(script)
    if not path.is_absolute() and not path.exists():
        path = LESSONS / path
    if not path.exists():
        raise FileNotFoundError(f"no lesson script {script!s} (looked in {LESSONS})")
    return path.resolve()


class Server:
    """A lesson script running in a subprocess, its output captured line by line."""

    def __init__(self, script: str | os.PathLike, *args: str, host: str | None = "127.0.0.1",
                 ready_timeout: float = READY_TIMEOUT, env: dict[str, str] | None = None):
        self.script = script_path(script)
        self.args = [str(a) for a in args]
        where = [] if host is None else ["--host", host]  # None: the script's own default
        cmd = [sys.executable, "-u", str(self.script), *where, "--port", "0", *self.args]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd=str(ROOT), preexec_fn=_die_with_parent(os.getpid()),
            env={**os.environ, **env} if env else None)  # env: variables added for the server
        _running.add(self)
        started.append(self)
        self.lines: list[str] = []  # stdout, one entry per line, without the newline
        self._stderr: list[str] = []
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self._stderr), daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        try:
            first = self.wait_for_line(lambda line: True, timeout=ready_timeout, start=0)
        except (Stalled, ServerFailed):
            exited = self.proc.poll() is not None
            self.stop()
            what = (f"exited with status {self.proc.returncode} before it reported"
                    if exited else f"did not report within {ready_timeout:g} s")
            raise ServerFailed(f"{self.script.name} {what} 'listening on HOST:PORT'; "
                               f"it printed:\n{self.output()}".rstrip()) from None
        prefix = "listening on "
        if not first.startswith(prefix):
            self.stop()
            raise ServerFailed(f"{self.script.name}: expected '{prefix}HOST:PORT', got {first!r}")
        host_text, _, port_text = first[len(prefix):].rpartition(":")
        self.host, self.port = host_text, int(port_text)
        self.address = (self.host, self.port)

    # -- output ---------------------------------------------------------------------------

    def _pump(self, stream, sink: list[str]) -> None:
        for raw in iter(stream.readline, b""):
            with self._changed:
                sink.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._changed.notify_all()
        stream.close()
        with self._changed:
            self._changed.notify_all()

    def wait_for_line(self, match, timeout: float = IO_TIMEOUT, start: int | None = None) -> str:
        """Wait (bounded) for a stdout line, from index `start` on, for which match(line) holds.

        `match` is a predicate or a substring. Raises ServerFailed if the server exits first.
        """
        test = match if callable(match) else (lambda line: match in line)
        index = 0 if start is None else start
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines[index:]:
                    if test(line):
                        return line
                index = len(self.lines)
                if self.proc.poll() is not None and not any(r.is_alive() for r in self._readers):
                    raise ServerFailed(f"{self.script.name} exited with status "
                                       f"{self.proc.returncode}:\n{self.output()}".rstrip())
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Stalled(f"no line matching {match!r} within {timeout:g} s")
                self._changed.wait(min(left, 0.1))

    def output(self) -> str:
        """Everything the server printed so far, stdout then stderr."""
        with self._changed:
            return "\n".join(self.lines + self._stderr)

    @property
    def stderr(self) -> str:
        with self._changed:
            return "\n".join(self._stderr)

    # -- clients --------------------------------------------------------------------------

    def connect(self, timeout: float = IO_TIMEOUT, rcvbuf: int | None = None) -> socket.socket:
        """A TCP client socket connected to this server, with every operation bounded.

        rcvbuf sets SO_RCVBUF before the connection is made (see `connect`).
        """
        return connect(self.address, timeout=timeout, rcvbuf=rcvbuf)

    def udp_client(self, timeout: float = IO_TIMEOUT, connect: bool = False) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.settimeout(timeout)
        if connect:
            sock.connect(self.address)
        return sock

    # -- the process ----------------------------------------------------------------------

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send_signal(self, signum: int) -> None:
        if self.alive():
            self.proc.send_signal(signum)

    @contextlib.contextmanager
    def paused(self):
        """Stop the server (SIGSTOP) for the block, then let it go on (SIGCONT).

        What clients do meanwhile reaches the kernel but not the server, so arrivals that
        would otherwise be seen one by one are seen together, in one event, every run.
        """
        self.send_signal(signal.SIGSTOP)
        _wait_state(self.pid, "T")
        try:
            yield self
        finally:
            self.send_signal(signal.SIGCONT)

    def stop(self, sig: int = signal.SIGTERM, grace: float = STOP_GRACE) -> int:
        """Stop the server (sig, then SIGKILL after `grace` seconds); return its exit status."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGCONT)  # a paused server cannot act on SIGTERM
                self.proc.send_signal(sig)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for reader in self._readers:
            reader.join(timeout=1.0)
        _running.discard(self)
        return self.proc.returncode

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.alive() else f"exited {self.proc.returncode}"
        return f"<Server {self.script.name} {state}>"

    # -- what the kernel says about it ----------------------------------------------------

    def open_fds(self) -> int:
        """How many file descriptors the server holds open now."""
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss_bytes(self) -> int:
        """The server's resident memory now."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS line")

    def cpu_seconds(self) -> float:
        """User plus system CPU time the server has used so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def cpu_seconds_over(self, window: float) -> float:
        """CPU seconds the server uses during the next `window` seconds (a measuring window,
        not synchronisation: the time passes whatever the server does)."""
        before = self.cpu_seconds()
        time.sleep(window)
        return self.cpu_seconds() - before

    def asleep_in_epoll(self, timeout: float = 5.0) -> bool:
        """Wait (bounded) until the server sleeps inside epoll_wait; False if it never does."""
        return asleep_in_epoll(self.pid, timeout)


def start(script: str | os.PathLike, *args: str, **kwargs) -> Server:
    """Start a lesson script with --port 0 and wait (bounded) until it listens."""
    return Server(script, *args, **kwargs)


def run(script: str | os.PathLike, *args: str, timeout: float = IO_TIMEOUT):
    """Run a lesson script to completion (for its error cases); output is captured."""
    return subprocess.run([sys.executable, str(script_path(script)), *map(str, args)],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          errors="replace", timeout=timeout, cwd=str(ROOT))


def source_of(script: str | os.PathLike, *names: str) -> str:
    """The source of functions or methods of a lesson script, as written there, read without
    running it: source_of("01_lt_echo.py", "EchoServer.serve", "EchoServer.dispatch").
    Each name is a top-level function or class, or Class.method; several are joined by a
    blank line. A name the script does not have raises KeyError, naming it."""
    import ast

    path = script_path(script)
    text = path.read_text(encoding="utf-8")
    tree = ast.parse(text)
    pieces = []
    for name in names:
        scope, node = tree.body, None
        for part in name.split("."):
            node = next((n for n in scope if isinstance(n, (ast.FunctionDef, ast.ClassDef))
                         and n.name == part), None)
            if node is None:
                raise KeyError(f"{path.name} has no {name}")
            scope = node.body
        lines = ast.get_source_segment(text, node, padded=True).splitlines()
        indent = min(len(line) - len(line.lstrip()) for line in lines if line.strip())
        pieces.append("\n".join(line[indent:] for line in lines))
    return "\n\n".join(pieces)


def show_source(script: str | os.PathLike, *names: str):
    """source_of(...) as a Python code block, for a notebook cell to display (and a deck to
    show as code): the lesson's own loop or handler, taken from the file so that the slide
    is never out of date."""
    from IPython.display import Markdown

    return Markdown(f"```python\n{source_of(script, *names)}\n```")


def stop_all() -> None:
    """Stop every server this process started and has not stopped yet."""
    for server in list(_running):
        server.stop()


atexit.register(stop_all)


def process_state(pid: int) -> str:
    """The one-letter state of a process (R running, S sleeping, T stopped, Z zombie...),
    or "X" once there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return "X"
    return stat.rpartition(")")[2].split()[0]


def gone(pid: int) -> bool:
    """True once pid is no process, or only a zombie waiting to be collected."""
    return process_state(pid) in ("Z", "X")


# Where, in the kernel, a process asleep in epoll_wait waits: do_epoll_wait, or ep_poll on
# older kernels. (A lesson that also waits in select or poll, whose sleeps are in
# poll_schedule_timeout, adds that name for its own tests.)
SLEEPING_IN = ("epoll", "ep_poll")


def _sleeps_in_epoll(pid: int) -> bool:
    # /proc/PID/wchan: the kernel function a sleeping process waits in; "0" while it runs.
    try:
        where = Path(f"/proc/{pid}/wchan").read_text()
    except OSError:  # the process has exited
        return False
    return any(name in where for name in SLEEPING_IN)


def asleep_in_epoll(pid: int, timeout: float = 5.0) -> bool:
    """Wait (bounded) until process `pid` sleeps inside epoll_wait; False if it never does."""
    try:
        wait_until(lambda: _sleeps_in_epoll(pid), timeout=timeout, what="sleeping in epoll_wait")
    except Stalled:
        return False
    return True


def _wait_state(pid: int, state: str, timeout: float = 5.0) -> None:
    # SIGSTOP takes effect asynchronously; wait until /proc shows the process stopped.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process_state(pid) == state:
            return
        time.sleep(0.001)
    raise Stalled(f"process {pid} did not reach state {state} within {timeout:g} s")


def wait_until(predicate, timeout: float = IO_TIMEOUT, what: str = "condition"):
    """Poll `predicate` until it returns something true; bounded. Returns that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise Stalled(f"{what} not reached within {timeout:g} s")
        time.sleep(0.005)


# -- client helpers: each one bounded -------------------------------------------------------

def connect(address, timeout: float = IO_TIMEOUT, rcvbuf: int | None = None) -> socket.socket:
    """A TCP client connected to `address`, every operation bounded by `timeout`.

    rcvbuf sets SO_RCVBUF before connecting, when it still shapes the TCP window the client
    advertises: a small one (4096) makes a slow reader whose kernel cannot absorb an echo,
    so the server must hold what it owes until the client takes it.
    """
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(timeout)
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


def reset(sock: socket.socket) -> None:
    """Close rudely: with SO_LINGER set to 0 the kernel sends RST, not FIN, and the server's
    next recv or send fails with ECONNRESET (or EPIPE) instead of reading EOF."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def half_close_and_read(sock: socket.socket, data: bytes = b"",
                        timeout: float = IO_TIMEOUT) -> bytes:
    """Send `data`, shut down our sending side (SHUT_WR, the server reads EOF), and read
    everything until the server closes. Returns what came; raises Stalled at the deadline.

    Sending and reading interleave, so a payload far larger than the socket buffers cannot
    deadlock against an echo. The socket stays open (the caller closes it).
    """
    return _drive([sock], [data], timeout, half_close=True)[0]


def send_all(sock: socket.socket, data: bytes, timeout: float = IO_TIMEOUT) -> None:
    """Send every byte or raise Stalled (a peer that stops reading cannot block us forever)."""
    sock.settimeout(timeout)
    try:
        sock.sendall(data)
    except socket.timeout:
        raise Stalled(f"could not send {len(data)} bytes within {timeout:g} s") from None


def recv_exactly(sock: socket.socket, n: int, timeout: float = IO_TIMEOUT) -> bytes:
    """Receive exactly n bytes, or raise Stalled (with what came) at the deadline or at EOF."""
    buf = bytearray()
    deadline = time.monotonic() + timeout
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise Stalled(f"received {len(buf)} of {n} bytes within {timeout:g} s", bytes(buf))
        sock.settimeout(left)
        try:
            chunk = sock.recv(min(n - len(buf), 1 << 20))
        except socket.timeout:
            continue
        if not chunk:
            raise Stalled(f"connection closed after {len(buf)} of {n} bytes", bytes(buf))
        buf += chunk
    return bytes(buf)


def recv_until_quiet(sock: socket.socket, quiet: float = QUIET, timeout: float = IO_TIMEOUT,
                     limit: int = 64 << 20) -> bytes:
    """Receive until nothing arrives for `quiet` seconds, EOF, `limit` bytes, or `timeout`.

    The stall detector: a server that has stopped answering is recognised by silence.
    """
    buf = bytearray()
    deadline = time.monotonic() + timeout
    while len(buf) < limit:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(min(quiet, left))
        try:
            chunk = sock.recv(min(limit - len(buf), 1 << 20))
        except socket.timeout:
            break
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def recv_until_eof(sock: socket.socket, timeout: float = IO_TIMEOUT, limit: int = 64 << 20) -> bytes:
    """Receive until the peer closes; raise Stalled (with what came) at the deadline."""
    buf = bytearray()
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or len(buf) > limit:
            raise Stalled(f"no EOF after {len(buf)} bytes within {timeout:g} s", bytes(buf))
        sock.settimeout(left)
        try:
            chunk = sock.recv(1 << 20)
        except socket.timeout:
            continue
        if not chunk:
            return bytes(buf)
        buf += chunk


def exchange(address, payloads: list[bytes], timeout: float = IO_TIMEOUT,
             half_close: bool = False, rcvbuf: int | None = None) -> list[bytes]:
    """Open one connection per payload, send them all at once while reading, in one thread.

    Returns, per connection, the bytes received: len(payload) bytes for an echo, or with
    half_close=True everything up to the server's close. Writing and reading interleave,
    so a payload far larger than the socket buffers cannot deadlock against an echo server.
    rcvbuf: each client's SO_RCVBUF, set before connecting (see `connect`).
    Raises Stalled if any connection is not done by the deadline.
    """
    socks = []
    try:
        for _ in payloads:
            socks.append(connect(address, timeout=timeout, rcvbuf=rcvbuf))
        return _drive(socks, payloads, timeout, half_close)
    finally:
        for sock in socks:
            sock.close()


def _drive(socks: list[socket.socket], payloads: list[bytes], timeout: float,
           half_close: bool) -> list[bytes]:
    # The one loop behind exchange() and half_close_and_read(): every socket non-blocking,
    # writes and reads interleaved, one deadline for all.
    sel = selectors.DefaultSelector()
    states = []
    try:
        for sock, payload in zip(socks, payloads):
            sock.setblocking(False)
            state = {"sock": sock, "out": memoryview(payload), "want": len(payload),
                     "got": bytearray(), "done": False, "shut": False}
            states.append(state)
            events = selectors.EVENT_READ
            if payload:
                events |= selectors.EVENT_WRITE
            elif half_close:
                sock.shutdown(socket.SHUT_WR)
            sel.register(sock, events, state)
        deadline = time.monotonic() + timeout
        pending = len(states) if half_close else sum(1 for s in states if s["want"])
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                got = [len(s["got"]) for s in states]
                raise Stalled(f"exchange not finished within {timeout:g} s; received {got}",
                              b"".join(bytes(s["got"]) for s in states))
            for key, mask in sel.select(min(left, 0.5)):
                s = key.data
                if mask & selectors.EVENT_WRITE and s["out"]:
                    try:
                        n = s["sock"].send(s["out"][:1 << 18])
                        s["out"] = s["out"][n:]
                    except BlockingIOError:
                        pass
                    except ConnectionError:  # the server hung up on us: count what came
                        s["out"] = s["out"][:0]
                    if not s["out"]:
                        if half_close:
                            with contextlib.suppress(OSError):
                                s["sock"].shutdown(socket.SHUT_WR)
                        sel.modify(s["sock"], selectors.EVENT_READ, s)
                if mask & selectors.EVENT_READ:
                    try:
                        chunk = s["sock"].recv(1 << 20)
                    except BlockingIOError:
                        continue
                    except ConnectionError:
                        chunk = b""
                    if chunk:
                        s["got"] += chunk
                    finished = (not chunk) if half_close else len(s["got"]) >= s["want"]
                    if not chunk and not finished:
                        raise Stalled(f"connection closed after {len(s['got'])} of "
                                      f"{s['want']} bytes", bytes(s["got"]))
                    if finished:
                        sel.unregister(s["sock"])
                        pending -= 1
        return [bytes(s["got"]) for s in states]
    finally:
        for s in states:
            s["sock"].settimeout(timeout)  # blocking again, bounded, for the caller
        sel.close()


def echo(address, payload: bytes, timeout: float = IO_TIMEOUT) -> bytes:
    """Send payload on a new connection and read back as many bytes, concurrently."""
    return exchange(address, [payload], timeout=timeout)[0]


def fill_without_reading(sock: socket.socket, limit: int = 64 << 20,
                         timeout: float = IO_TIMEOUT, quiet: float = 0.25,
                         chunk: bytes | None = None) -> int:
    """Send on sock without ever reading until the kernel pushes back; return bytes sent.

    "Pushed back" means the socket stayed unwritable for `quiet` seconds: every buffer on
    the way (ours, the server's, and whatever the server holds itself) is full. Raises
    AssertionError if the peer still takes data after `limit` bytes or `timeout` seconds.
    `chunk` is what is sent over and over (zero bytes by default; for an HTTP server,
    pipelined requests, so that every byte asks for an answer).
    """
    sock.setblocking(False)
    sent = 0
    chunk = bytes(256 * 1024) if chunk is None else chunk
    deadline = time.monotonic() + timeout
    try:
        while sent < limit and time.monotonic() < deadline:
            if not select.select([], [sock], [], quiet)[1]:
                return sent
            try:
                sent += sock.send(chunk)
            except BlockingIOError:
                pass
    finally:
        sock.settimeout(timeout)
    raise AssertionError(f"the server kept taking data: {sent} bytes and counting")


# -- reading the lessons' --trace lines ---------------------------------------------------
# The echo lessons print "accept fd N", "wake N=IN M=OUT|HUP ...", "interest fd N: IN ->
# IN|OUT", "close fd N: why"; lesson 03 also "read fd N: M bytes, stopped by ..."; lesson 05
# "wake socket=IN" and "interest: IN -> IN|OUT". These parse them, one kind each.

def accepted_fds(lines: list[str]) -> list[int]:
    """The fd of every "accept fd N" line, in order."""
    return [int(line.split()[2]) for line in lines if line.startswith("accept fd ")]


def wakes(lines: list[str]) -> list[dict[str, set[str]]]:
    """Every "wake ..." line as {fd or name: the set of events reported for it}."""
    found = []
    for line in lines:
        if line == "wake" or line.startswith("wake "):
            found.append({fd: set(mask.split("|"))
                          for fd, _, mask in (item.partition("=") for item in line.split()[1:])})
    return found


def reports_for(lines: list[str], fd, event: str = "IN") -> int:
    """How many wake-ups reported `event` (IN, OUT, HUP, ERR) for `fd`."""
    return sum(1 for wake in wakes(lines) if event in wake.get(str(fd), ()))


def interest_changes(lines: list[str]) -> list[tuple[int | None, str, str]]:
    """Every interest change as (fd, before, after); fd is None for lesson 05's one socket."""
    found = []
    for line in lines:
        if line.startswith("interest"):
            head, _, change = line.partition(": ")
            before, _, after = change.partition(" -> ")
            fd = head.split()[-1]
            found.append((int(fd) if fd.isdigit() else None, before, after))
    return found


def reads(lines: list[str]) -> list[tuple[int, int]]:
    """Lesson 03's "read fd N: M bytes, ..." lines as (fd, bytes), in order."""
    found = []
    for line in lines:
        if line.startswith("read fd "):
            fd, _, rest = line[len("read fd "):].partition(": ")
            found.append((int(fd), int(rest.split()[0])))
    return found


def readable_reports(script: str | os.PathLike, size: int, recv_size: int = 1024,
                     *args: str) -> int:
    """How often epoll reported one client readable for one burst of `size` bytes.

    For the echo lessons' --trace output ("accept fd N", "wake N=IN ..."). The burst is sent
    while the server is paused, so it is all in the socket before the server looks: one
    arrival, every run. The client stays connected while counting (its EOF would be one
    more report, or, on a busy machine, be read in the same turn as the data); a second
    client's "accept" line marks the end of the trace to count.
    """
    with start(script, "--trace", "--recv-size", str(recv_size), *args) as server:
        with server.connect() as sock:
            first = server.wait_for_line("accept fd")
            fd = first.split()[-1]
            data = os.urandom(size)
            with server.paused():
                send_all(sock, data)
            if recv_exactly(sock, size) != data:
                raise AssertionError("the echo came back altered")
            with server.connect():
                end = server.lines.index(first) + 1
                server.wait_for_line("accept fd", start=end)
                end = next(i for i in range(end, len(server.lines))
                           if server.lines[i].startswith("accept fd"))
            return reports_for(server.lines[:end], fd, "IN")


def free_port_in_use():
    """A listening socket on a loopback port, for showing what 'port in use' looks like."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def recv_datagrams_until(sock: socket.socket, last: bytes, timeout: float = IO_TIMEOUT,
                         limit: int = 100_000) -> list[bytes]:
    """Receive datagrams, one recv each, until one equals `last`; return those before it.

    For UDP: send a known final datagram after the others and wait for it to come back,
    instead of guessing when the rest have arrived. Raises Stalled (with what came, joined)
    at the deadline or after `limit` datagrams.
    """
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(got) < limit:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(left)
        try:
            datagram = sock.recv(1 << 16)  # a datagram never exceeds 64 KiB
        except socket.timeout:
            break
        if datagram == last:
            return got
        got.append(datagram)
    raise Stalled(f"final datagram not received within {timeout:g} s; "
                  f"{len(got)} others came", b"".join(got))


def recv_http_response(sock: socket.socket, pending: bytearray | None = None,
                       timeout: float = IO_TIMEOUT, head_only: bool = False):
    """Receive one HTTP/1.x response framed by Content-Length; return (status, head, body).

    `pending` is a bytearray kept between calls on one connection: bytes that arrive beyond
    this response (pipelined answers) stay in it for the next call. A 1xx answer or
    head_only=True (for HEAD) has no body. Raises Stalled (with what came) at the deadline
    or at EOF.
    """
    buf = bytearray() if pending is None else pending
    deadline = time.monotonic() + timeout

    def more():
        left = deadline - time.monotonic()
        if left <= 0:
            raise Stalled(f"no complete response within {timeout:g} s", bytes(buf))
        sock.settimeout(left)
        try:
            chunk = sock.recv(1 << 16)
        except socket.timeout:
            return
        if not chunk:
            raise Stalled(f"connection closed inside a response ({len(buf)} bytes)", bytes(buf))
        buf.extend(chunk)

    while (end := buf.find(b"\r\n\r\n")) < 0:
        more()
    head = bytes(buf[:end + 4])
    status = int(head.split(b" ", 2)[1])
    length = 0
    if not head_only and status >= 200:
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
    while len(buf) < len(head) + length:
        more()
    body = bytes(buf[len(head):len(head) + length])
    del buf[:len(head) + length]
    return status, head, body



# -- where a lesson server waits (used by notebooks 01 and 02) --------------------------------

def in_epoll_wait(server: Server) -> bool:
    """True while the server's one thread sleeps inside epoll_wait (/proc/PID/wchan).

    A single-threaded lesson server that sleeps there has finished its turn: whatever a
    client does next arrives while the loop waits, not while it is still busy.
    """
    return _sleeps_in_epoll(server.pid)


def wait_in_epoll_wait(server: Server, timeout: float = IO_TIMEOUT) -> None:
    """Wait (bounded) until the server sleeps inside epoll_wait; Stalled if it does not."""
    if not asleep_in_epoll(server.pid, timeout):
        raise Stalled(f"the server was not asleep in epoll_wait within {timeout:g} s")


# -- what the kernel holds for a connection, and a client that reads slowly (notebooks 03, 04) --

def unread_bytes(server: Server, client: socket.socket) -> int:
    """Bytes that arrived on the server's side of `client`'s TCP connection and that the
    server has not read yet: the kernel's own count (what `ss -tn` shows as Recv-Q, and
    /proc/net/tcp as rx_queue), asked for that one socket through sock_diag netlink."""
    local, peer = client.getpeername(), client.getsockname()  # the server's side: swapped
    family = socket.AF_INET6 if ":" in local[0] else socket.AF_INET

    def address(host):
        packed = socket.inet_pton(family, host)
        return packed + bytes(16 - len(packed))

    no_cookie = 0xFFFFFFFF
    sockid = (struct.pack("!HH", local[1], peer[1]) + address(local[0]) + address(peer[0])
              + struct.pack("=III", 0, no_cookie, no_cookie))
    request = struct.pack("=BBBxI", family, socket.IPPROTO_TCP, 0, 0xFFFFFFFF) + sockid
    by_family, flag_request, netlink_sock_diag = 20, 1, 4  # linux/sock_diag.h, netlink.h
    message = struct.pack("=IHHII", 16 + len(request), by_family, flag_request, 1, 0) + request
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, netlink_sock_diag) as nl:
        nl.settimeout(IO_TIMEOUT)
        nl.sendto(message, (0, 0))
        reply = nl.recv(65536)
    if struct.unpack_from("=H", reply, 4)[0] != by_family:  # an error message instead
        raise LookupError(f"the kernel knows no socket {local} -> {peer}")
    # struct inet_diag_msg after the 16-byte header: 4 bytes, the 48-byte id, expires, rqueue
    return struct.unpack_from("=I", reply, 16 + 4 + 48 + 4)[0]


def slow_reader(server: Server, size: int = 24 << 20, read_size: int = 1024,
                rcvbuf: int | None = 64 * 1024, stall: float = 5.0) -> tuple[bytes, bytes]:
    """Send `size` random bytes in big pieces while reading the echo in small ones (and
    with a small receive buffer), then read the rest. An echo server's unsent output piles
    up past its high-water mark and drains again many times. Returns (payload, echo);
    raises Stalled if nothing moves in either direction for `stall` seconds,
    AssertionError after 60 s or at an early EOF."""
    payload = os.urandom(size)
    out, got = memoryview(payload), bytearray()
    with server.connect(rcvbuf=rcvbuf) as sock:
        sock.setblocking(False)
        deadline = time.monotonic() + 60
        while len(got) < size:
            readable, writable, _ = select.select([sock], [sock] if out else [], [], stall)
            if not readable and not writable:
                raise Stalled(f"nothing moved for {stall:g} s: sent {size - len(out)}, "
                              f"echoed {len(got)} of {size}", bytes(got))
            assert time.monotonic() < deadline, f"echoed {len(got)} of {size} in 60 s"
            if writable:
                try:
                    out = out[sock.send(out[:256 * 1024]):]
                except BlockingIOError:
                    pass
            if readable:
                try:
                    chunk = sock.recv(read_size)
                except BlockingIOError:
                    continue
                assert chunk, f"the server closed after echoing {len(got)} of {size}"
                got += chunk
    return payload, bytes(got)


# -- a server that died: its exit status and its last words (notebook 06, its tests) ------

def last_words(server: Server, timeout: float = IO_TIMEOUT) -> tuple[int, str]:
    """Wait (bounded) until the server exits; return (its exit status, the last line it
    wrote to stderr: for a crash, the exception that ended it). Raises Stalled if it is
    still running at the deadline."""
    try:
        server.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise Stalled(f"{server.script.name} still running after {timeout:g} s") from None
    status = server.stop()  # already exited: this only collects the rest of its output
    lines = [line.strip() for line in server.stderr.splitlines() if line.strip()]
    return status, lines[-1] if lines else ""


def activity(server: Server, window: float = 0.5, step: float = 0.02) -> list[tuple[float, float, str]]:
    """Samples over a measuring window: (seconds since it began, CPU seconds the server used
    since then, its state: R running or waiting for a CPU, S asleep, ...). A spinning loop is
    R in every sample however busy the machine (it may wait for a CPU, it never sleeps); an
    idle server is S, asleep in epoll_wait."""
    before, began, samples = server.cpu_seconds(), time.monotonic(), []
    while (now := time.monotonic() - began) < window:
        samples.append((now, server.cpu_seconds() - before, process_state(server.pid)))
        time.sleep(step)  # a measuring window, not synchronisation
    samples.append((time.monotonic() - began, server.cpu_seconds() - before,
                    process_state(server.pid)))
    return samples


# -- a client that is owed output when it half-closes ------------------------------------------

def kernel_takes(piece: bytes = bytes(1 << 16), rcvbuf: int = 4096) -> int:
    """How many bytes the kernel accepts from a loopback sender, in sends of `piece`, when
    the reader has an `rcvbuf` receive buffer and reads nothing: what a server can hand to
    such a client before it must keep the rest itself."""
    with free_port_in_use() as listener:
        with connect(listener.getsockname(), rcvbuf=rcvbuf):
            sender, _ = listener.accept()
            with sender:
                sender.setblocking(False)
                taken = 0
                try:
                    while True:
                        taken += sender.send(piece)
                except BlockingIOError:
                    return taken


def _unsent(sock: socket.socket) -> int:
    # SIOCOUTQ (the same number as TIOCOUTQ): bytes this socket sent that the peer's kernel
    # has not acknowledged yet.
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]


def owed_at_eof(server: Server, payload: bytes, rcvbuf: int = 4096,
                timeout: float = IO_TIMEOUT) -> bytes:
    """Send `payload`, half-close, and read only once the server has read all of it and the
    EOF; then read until the server closes. Returns what came back.

    A payload somewhat larger than kernel_takes() (and smaller than what the server reads
    before it pushes back) leaves the server holding output it owes at the moment it reads
    EOF, every run: a server that closes at EOF then loses exactly that tail. (A client that
    reads while it sends makes the same loss depend on timing.)
    """
    with server.connect(timeout=timeout, rcvbuf=rcvbuf) as sock:
        send_all(sock, payload, timeout)
        sock.shutdown(socket.SHUT_WR)

        def all_read():
            try:
                return _unsent(sock) == 0 and unread_bytes(server, sock) == 0
            except LookupError:  # the server's side is gone: it closed, nothing is unread
                return True

        wait_until(all_read, timeout=timeout, what="the server reading everything sent")
        wait_in_epoll_wait(server, timeout)  # nothing left to read: the EOF was read too
        return recv_until_eof(sock, timeout)


class ToolMissing(RuntimeError):
    """A command-line tool a cell drives is not installed. Shown in a notebook as its one
    sentence, without a traceback: the cell stops there, and says why."""

    def _render_traceback_(self):  # IPython shows these lines instead of a traceback
        return [f"{type(self).__name__}: {self}"]


def require_tool(command: str) -> str:
    """The path of a command-line tool (curl, wrk, nc, strace...) that a cell runs; raises
    ToolMissing, one sentence naming the package that brings it, when it is not installed.
    The packages are those of .ci/tools.txt, which CI and Binder install, so there a
    missing tool fails the notebook: no cell is ever skipped."""
    import shutil

    path = shutil.which(command)
    if path is not None:
        return path
    package = command
    listed = ROOT / ".ci" / "tools.txt"
    if listed.exists():
        for line in listed.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 2 and not fields[0].startswith("#") and fields[1] == command:
                package = fields[0]
    raise ToolMissing(f"{command} is not installed here, so this cell cannot run it: install the "
                      f"package {package} (Debian or Ubuntu: sudo apt-get install {package}; on a "
                      f"JupyterHub, ask whoever runs it to add {package} to the image).")


# -- many workers (lesson 08): who they are, where they sleep, how often they were woken ----

def worker_pids(server: Server, count: int, timeout: float = IO_TIMEOUT) -> dict[int, int]:
    """{worker number: pid} from lesson 08's "worker K started, pid P" lines, once `count`
    of them have come (bounded: they follow the readiness line)."""
    def found():
        pids = {}
        for line in server.lines:
            if line.startswith("worker ") and ", pid " in line:
                pids[int(line.split()[1])] = int(line.rpartition(" ")[2])
        return pids if len(pids) >= count else None
    return wait_until(found, timeout=timeout, what=f"{count} 'worker K started' lines")


def wakeups(pid: int) -> int:
    """How often process `pid` has gone to sleep of its own accord, by the kernel's count
    (voluntary_ctxt_switches in /proc/PID/status). A process that sleeps again after every
    wake-up adds one per wake-up, including those that never return from epoll_wait."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    raise RuntimeError("no voluntary_ctxt_switches line")


def accepts_by_worker(lines: list[str]) -> list[int]:
    """The worker number of every "worker K: accept fd N" line of lesson 08's --trace."""
    return [int(line.split()[1].rstrip(":")) for line in lines
            if line.startswith("worker ") and ": accept fd " in line]


def woken_per_connection(server: Server, pids: dict[int, int], connections: int,
                         clients: list | None = None) -> list[tuple[int, int]]:
    """Connect `connections` clients one at a time, each while every worker sleeps in
    epoll_wait, and return for each (how many workers the kernel woke for it, the worker
    that accepted it). For a server started with --trace. The clients are appended to
    `clients` and left open when it is given, else closed at the end."""
    kept = [] if clients is None else clients
    found = []
    try:
        for _ in range(connections):
            for pid in pids.values():
                wait_until(lambda: _sleeps_in_epoll(pid), what="every worker in epoll_wait")
            before = {k: wakeups(pid) for k, pid in pids.items()}
            seen = len(accepts_by_worker(server.lines))
            kept.append(server.connect())
            wait_until(lambda: len(accepts_by_worker(server.lines)) > seen, what="the accept")
            for pid in pids.values():  # a woken worker runs, finds nothing or accepts, sleeps
                wait_until(lambda: _sleeps_in_epoll(pid), what="every worker in epoll_wait")
            woken = sum(wakeups(pid) > before[k] for k, pid in pids.items())
            found.append((woken, accepts_by_worker(server.lines)[seen]))
    finally:
        if clients is None:
            for sock in kept:
                sock.close()
    return found


def every_thread_in_epoll_wait(pid: int) -> bool:
    """True while every thread of process `pid` sleeps inside epoll_wait: a server whose
    threads share one epoll instance has finished everything it was given."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:  # the process has exited
        return False
    def asleep(tid):
        try:
            where = Path(f"/proc/{pid}/task/{tid}/wchan").read_text()
        except OSError:  # that thread has exited
            return True
        return "epoll" in where or "ep_poll" in where
    return all(asleep(tid) for tid in tasks)
