"""The two HTTP load generators of the HTTP benchmarks (http_bench.py, goals_bench.py): wrk
and h2load, run under the same conditions, each answer checked.

Why h2load beside wrk. A benchmark is trusted once a second load generator gives the same
picture; the second should share as little as possible with the first. h2load (the nghttp2
project; Debian and Ubuntu: `sudo apt-get install nghttp2-client`) is written independently of
wrk, with its own event loop and its own HTTP/1.1 parser, and asked the right way it sends the
same load: `h2load --h1 -t1 -c50 -m1` speaks HTTP/1.1 on 50 keep-alive connections from one
thread, each with one request in flight (-m1: no pipelining), the next sent once the whole
answer is in: a closed loop, as wrk's is. The alternatives were weighed and left:
    ab -k         (apache2-utils) sends HTTP/1.0 requests with "Connection: Keep-Alive": a
                  different request, which an HTTP/1.1 server may rightly answer by closing,
                  and then it measures connection set-up, not requests.
    our own C     a second generator of ours (as echo_bench.py has two) would share our reading
                  of HTTP and our mistakes; an independent tool does not.

The same conditions for both: 50 connections (--connections), one thread, the server pinned to
the first core and the generator to the last (the caller passes the cores), a separate warm-up
run of each generator against each server, whole seconds (wrk takes no fractions). h2load's
own --warm-up-time is not used: in nghttp2 1.52 it resets the request counts at the end of
the warm-up but not the byte counts (its "data" then holds the warm-up's bodies too, and its
"headers" exceeded its "total"), and the body check below needs the bytes.

Every answer must be "200 OK" with the 13-byte body, and a run that saw anything else is
reported with what was wrong and not counted:
    wrk     socket errors (connect, read, write, timeout), answers with status 400 or more, and
            the bytes read: each answer of a server is as long as the one probe() received
            (headers included; the Date header has a fixed width), so R answers make between
            R and R + connections such lengths (the last may be cut off by the end of the
            run). A check run (the warm-up) also looks at every answer in wrk's Lua hook:
            status 200, 13-byte body. That hook costs wrk time on every answer, so the
            measured runs do without it.
    h2load  failed, errored or timed-out requests; every done request a 2xx; body bytes
            between 13 per done request and 13 per started one. A check run (the warm-up)
            also writes h2load's log of every request and requires status 200 on each line.

Each run also gives the share of one core the generator used: near 100%, the generator may be
what limits the figure. A run still going 30 s after its end is stopped and reported: h2load
1.52 did not stop when clients were still connecting at the end of its duration (seen against
a server whose listen backlog of 5 dropped the SYNs of 50 clients connecting at once).
"""

import os
import re
import resource
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BODY = b"Hello, world!"  # what every server of the HTTP benchmarks answers to GET /
AGREE = 0.10  # two generators' ratios further apart than this: not a figure to trust yet
GENERATOR_LIMIT = 0.9  # a generator using this share of its core or more may be what limits
TIMEOUT = 5  # seconds wrk waits for an answer before it counts a timeout
PACKAGES = {"wrk": "wrk", "h2load": "nghttp2-client"}  # Debian and Ubuntu package names
NAMES = list(PACKAGES)  # in the order they run in a round's first pass

# wrk's Lua hooks. done() runs once, in wrk's main Lua state, after the run: it prints one line
# that parse_wrk() reads. The check run adds response(), called for every answer in each
# thread's own state; done() collects the threads' counts with thread:get().
WRK_COUNT = """
local threads = {}
function setup(thread) table.insert(threads, thread) end
function done(summary, latency, requests)
  local wrong = 0
  for _, thread in ipairs(threads) do wrong = wrong + (thread:get("wrong") or 0) end
  local e = summary.errors
  io.write(string.format(
    "wrk-summary requests %d microseconds %d bytes %d connect %d read %d write %d timeout %d "
    .. "status %d wrong %d checked %s\\n", summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.timeout, e.status, wrong, tostring(response ~= nil)))
end
"""
WRK_CHECK = WRK_COUNT + """
wrong = 0
function response(status, headers, body)
  if status ~= 200 or #body ~= %d then wrong = wrong + 1 end
end
""" % len(BODY)


class BenchError(RuntimeError):
    """A server or a generator that could not be measured; the message says why."""


@dataclass
class Run:
    """One run of one generator against one server."""
    generator: str
    rps: float  # answers per second
    requests: int  # answers counted
    cpu: float  # share of one core the generator used
    problems: list = field(default_factory=list)  # what was wrong; any: the run is not counted
    server_cpu: float = 0.0  # share of one core the server used, when the caller measured it

    @property
    def per_cpu(self):
        """Answers per second of server CPU: steadier than rps on a busy machine."""
        return self.rps / self.server_cpu if self.server_cpu > 0 else 0.0


def cpu_seconds(pid):
    """CPU seconds used so far by a server: the process, all its threads (also those that have
    ended: http.server's one per connection) and its children (nginx: the master and its
    worker), from /proc/PID/stat (utime and stime, in clock ticks)."""
    def own(p):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)
        except (OSError, ValueError, IndexError):
            return 0
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return (own(pid) + sum(own(int(child)) for child in children)) / os.sysconf("SC_CLK_TCK")


def agree(a, b):
    """Whether two generators' figures (or ratios) lie within AGREE of each other."""
    return abs(b / a - 1) <= AGREE if a else False


def pin_to(cpu):
    """preexec_fn: run the child (and every thread it starts) on one core."""
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


def find(wanted):
    """({name: path} of the wanted generators installed here, [one line for each missing])."""
    found, missing = {}, []
    for name in wanted:
        path = shutil.which(name)
        if path:
            found[name] = path
        else:
            missing.append(f"{name} is not installed; on Debian or Ubuntu: "
                           f"sudo apt-get install {PACKAGES[name]}")
    return found, missing


def probe(port, timeout=5.0):
    """Send GET / as wrk sends it and return the length in bytes of the whole answer, after
    checking it: status 200 and BODY. Raises BenchError otherwise."""
    request = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    deadline = time.monotonic() + timeout
    buf = bytearray()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(request)
            while True:
                end = buf.find(b"\r\n\r\n")
                if end >= 0:
                    head = bytes(buf[:end + 4])
                    length = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
                    if not length:
                        raise BenchError(f"answered without a Content-Length: {head[:200]!r}")
                    if len(buf) >= len(head) + int(length.group(1)):
                        break
                if time.monotonic() > deadline:
                    raise BenchError(f"no whole answer to GET / within {timeout:g} s")
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = sock.recv(1 << 16)
                if not chunk:
                    raise BenchError(f"connection closed after {len(buf)} bytes of the answer")
                buf += chunk
    except OSError as e:
        raise BenchError(f"GET / failed: {e}") from None
    status = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b"?"
    body = bytes(buf[len(head):len(head) + int(length.group(1))])
    if status != b"200" or body != BODY:
        raise BenchError(f"answered {status.decode(errors='replace')} {body[:40]!r} instead "
                         f"of 200 {BODY!r}")
    return len(head) + len(body)


def parse_wrk(output, connections, answer_bytes=None):
    """Run figures and problems from the line WRK_COUNT's done() prints."""
    line = re.search(r"wrk-summary (.*)", output)
    if not line:
        raise BenchError(f"could not read wrk's output:\n{output.strip()[-400:]}")
    words = line.group(1).split()
    got = dict(zip(words[::2], words[1::2]))
    n = {key: int(value) for key, value in got.items() if key != "checked"}
    requests, seconds = n["requests"], n["microseconds"] / 1e6
    problems = []
    errors = {kind: n[kind] for kind in ("connect", "read", "write", "timeout") if n[kind]}
    if errors:
        problems.append("socket errors: " + ", ".join(f"{kind} {count}"
                                                      for kind, count in errors.items()))
    if n["status"]:
        problems.append(f"{n['status']} answers with status 400 or more")
    if n["wrong"]:
        problems.append(f"{n['wrong']} answers not 200 with a {len(BODY)}-byte body")
    if requests == 0:
        problems.append("no answer at all")
    elif answer_bytes and not (requests * answer_bytes <= n["bytes"]
                               <= (requests + connections) * answer_bytes):
        problems.append(f"read {n['bytes']:,} bytes, not {requests:,} answers of {answer_bytes} "
                        f"bytes (up to {connections} more, cut off at the end)")
    return (requests / seconds if seconds else 0.0), requests, problems


H2LOAD_LINES = {
    "rps": r"finished in [\d.]+\w+, ([\d.]+) req/s",
    "requests": r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                r"(\d+) failed, (\d+) errored, (\d+) timeout",
    "status": r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx",
    "body": r"traffic: .*headers .*\((\d+)\) data",
}


def parse_h2load(output):
    """Run figures and problems from h2load's summary."""
    found = {key: re.search(pattern, output) for key, pattern in H2LOAD_LINES.items()}
    if not all(found.values()):
        raise BenchError(f"could not read h2load's output:\n{output.strip()[-400:]}")
    rps = float(found["rps"].group(1))
    _, started, done, _, failed, errored, timeout = map(int, found["requests"].groups())
    ok, *other = map(int, found["status"].groups())
    body = int(found["body"].group(1))
    problems = []
    if failed or errored or timeout:
        problems.append(f"requests failed {failed}, errored {errored}, timed out {timeout}")
    # A request can be answered and counted as 2xx after the end, without being counted as
    # done: so 2xx answers may exceed the done ones (by at most the requests in flight).
    if ok < done or any(other):
        problems.append(f"{done - ok:,} answers not 2xx (3xx {other[0]}, 4xx {other[1]}, "
                        f"5xx {other[2]})")
    if done == 0:
        problems.append("no answer at all")
    elif not len(BODY) * done <= body <= len(BODY) * started:
        problems.append(f"{body:,} bytes of bodies, not {len(BODY)} for each of {done:,} answers "
                        f"(up to {started - done} more, cut off at the end)")
    return rps, done, problems


def wrong_statuses(log_file):
    """How many requests of h2load's --log-file did not get status 200 (column 2)."""
    with open(log_file) as log:
        return sum(1 for line in log if line.split("\t")[1:2] != ["200"])


def measure(name, path, port, seconds, connections, cpu=None, check=False, answer_bytes=None,
            server_pid=None):
    """One run of generator `name` (at `path`) against 127.0.0.1:port, for `seconds` (whole),
    pinned to `cpu` (None: anywhere). check=True looks at every answer (slower: for a warm-up).
    answer_bytes: the whole answer's length, from probe(), which wrk's bytes must match.
    server_pid: the server's process, whose CPU over the run is then measured too."""
    server_before = cpu_seconds(server_pid) if server_pid else 0.0
    url = f"http://127.0.0.1:{port}/"
    with tempfile.TemporaryDirectory(prefix="http-load-") as tmp:
        log = Path(tmp) / "requests.tsv"
        if name == "wrk":
            script = Path(tmp) / "count.lua"
            script.write_text(WRK_CHECK if check else WRK_COUNT)
            command = [path, "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout",
                       f"{TIMEOUT}s", "-s", str(script), url]
        elif name == "h2load":
            command = [path, "--h1", "-t1", f"-c{connections}", "-m1", f"-D{seconds}", url]
            if check:
                command.insert(1, f"--log-file={log}")
        else:
            raise ValueError(f"no such load generator: {name}")
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.monotonic()
        try:
            got = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30,
                                 preexec_fn=pin_to(cpu))
        except subprocess.TimeoutExpired:
            raise BenchError(f"{name} did not finish within {seconds + 30} s") from None
        wall = time.monotonic() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        server_used = cpu_seconds(server_pid) - server_before if server_pid else 0.0
        if got.returncode != 0:
            raise BenchError(f"{name} failed: {(got.stderr.strip() or got.stdout.strip())[-400:]}")
        if name == "wrk":
            rps, requests, problems = parse_wrk(got.stdout, connections, answer_bytes)
            if check and "checked true" not in got.stdout:
                problems.append("wrk's check of every answer did not run")
        else:
            rps, requests, problems = parse_h2load(got.stdout)
            if check:
                wrong = wrong_statuses(log)
                if wrong:
                    problems.append(f"{wrong} requests not answered with status 200")
    used = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return Run(name, rps, requests, used / wall if wall > 0 else 0.0, problems,
               server_used / wall if wall > 0 else 0.0)
