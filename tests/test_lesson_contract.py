"""What every lesson script promises (shared/contract.md, "Every lesson script"), checked
for each of them: the same promise, one test, every lesson."""

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import harness

LESSONS = sorted(p.name for p in (harness.LESSONS).glob("[0-9][0-9]_*.py"))
each_lesson = pytest.mark.parametrize("lesson", LESSONS)


@each_lesson
def test_listens_on_loopback_unless_told_otherwise(start, lesson):
    server = start(lesson, host=None)  # no --host: the script's default
    assert server.lines[0] == f"listening on 127.0.0.1:{server.port}" and server.port > 0


@each_lesson
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_it_with_status_0_within_a_second(start, lesson, signum):
    server = start(lesson)
    began = time.monotonic()
    server.send_signal(signum)
    assert server.proc.wait(timeout=5) == 0, server.output()
    assert time.monotonic() - began < 1.0
    assert "Traceback" not in server.output()


@each_lesson
def test_port_in_use_is_one_clear_line_and_status_2(lesson):
    with harness.free_port_in_use() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        port = tcp.getsockname()[1]
        udp.bind(("127.0.0.1", port))  # taken for TCP and UDP lessons alike
        result = harness.run(lesson, "--port", str(port))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert f"127.0.0.1:{port}" in result.stderr and "--port 0" in result.stderr
    assert "Traceback" not in result.stderr


@each_lesson
@pytest.mark.parametrize("args", [["--port", "http"], ["--port", "70000"], ["--frobnicate"]])
def test_a_bad_flag_is_one_clear_line_and_status_2(lesson, args):
    result = harness.run(lesson, *args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert "error:" in result.stderr and "Traceback" not in result.stderr


@each_lesson
def test_help_names_host_and_port(lesson):
    result = harness.run(lesson, "--help")
    assert result.returncode == 0 and "--host" in result.stdout and "--port" in result.stdout


@each_lesson
def test_without_epoll_it_says_so(lesson):
    # The same script on a Python without select.epoll, as on macOS or Windows.
    code = ("import runpy, select, sys; del select.epoll; sys.argv = [sys.argv[0], '--port', '0'];"
            f"runpy.run_path({str(harness.script_path(lesson))!r}, run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=10, stdin=subprocess.DEVNULL)
    assert result.returncode == 2
    assert "epoll exists only on Linux" in result.stderr and "Traceback" not in result.stderr


@each_lesson
def test_idle_it_sleeps_in_epoll_wait(start, lesson):
    server = start(lesson)
    harness.wait_until(lambda: "epoll" in Path(f"/proc/{server.pid}/wchan").read_text(),
                       timeout=5, what="the server asleep in epoll_wait")
    before = server.cpu_seconds()
    time.sleep(0.5)  # a measuring window, not synchronisation
    assert server.cpu_seconds() - before <= 0.02


@each_lesson
def test_standard_library_only(lesson):
    source = (harness.LESSONS / lesson).read_text()
    imported = {line.split()[1].split(".")[0] for line in source.splitlines()
                if line.startswith(("import ", "from "))}
    assert imported <= set(sys.stdlib_module_names), imported - set(sys.stdlib_module_names)
