"""The harness: bounded waits, captured output, and servers that are always stopped."""

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import harness

NOTEBOOKS = Path(harness.__file__).resolve().parent


def script(tmp_path, body):
    path = tmp_path / "fake_server.py"
    path.write_text(textwrap.dedent(body))
    return path


def test_failure_to_start_reports_the_scripts_own_words(tmp_path):
    path = script(tmp_path, """
        import sys
        print("fake_server: error: cannot listen: Address already in use", file=sys.stderr)
        sys.exit(2)
    """)
    with pytest.raises(harness.ServerFailed, match="Address already in use"):
        harness.start(path)


def test_a_server_that_never_gets_ready_is_bounded_and_stopped(tmp_path):
    path = script(tmp_path, "import time\nprint('warming up', flush=False)\ntime.sleep(60)\n")
    began = time.monotonic()
    with pytest.raises(harness.ServerFailed):
        harness.start(path, ready_timeout=1)
    assert time.monotonic() - began < 1 + harness.STOP_GRACE + 1
    assert not harness._running


def test_stop_escalates_to_sigkill(tmp_path):
    path = script(tmp_path, """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("listening on 127.0.0.1:1", flush=True)
        time.sleep(60)
    """)
    server = harness.start(path)
    assert server.stop(grace=0.5) == -signal.SIGKILL


def test_output_is_captured_not_inherited(tmp_path):
    # A starter process whose own fds 1 and 2 are files we read afterwards: whatever a server
    # writes, by print or straight to fd 1 and 2, must reach the starter's pipes only.
    loud = script(tmp_path, """
        import os, sys, time
        print("listening on 127.0.0.1:1", flush=True)
        print("server says hello on stdout", flush=True)
        print("server says hello on stderr", file=sys.stderr, flush=True)
        os.write(1, b"raw fd 1\\n")
        os.write(2, b"raw fd 2\\n")
        time.sleep(60)
    """)
    code = f"""
import harness
loud = harness.start({str(loud)!r})
loud.wait_for_line("raw fd 1")
harness.wait_until(lambda: "raw fd 2" in loud.stderr, timeout=5)
lesson = harness.start("01_lt_echo.py", "--trace")
harness.echo(lesson.address, b"x")
lesson.wait_for_line("close fd")
harness.stop_all()
print("captured", len(loud.lines), len(loud.stderr.splitlines()), len(lesson.lines) > 3)
"""
    out, err = tmp_path / "fd1", tmp_path / "fd2"
    with open(out, "wb") as fd1, open(err, "wb") as fd2:
        subprocess.run([sys.executable, "-c", code], cwd=NOTEBOOKS, stdin=subprocess.DEVNULL,
                       stdout=fd1, stderr=fd2, timeout=30, check=False)
    assert err.read_bytes() == b""
    assert out.read_bytes() == b"captured 3 2 True\n"


def test_paused_server_answers_only_after_resume(start):
    server = start("02_et_echo.py")
    with server.connect() as sock:
        with server.paused():
            harness.send_all(sock, b"wait")
            assert harness.recv_until_quiet(sock, quiet=0.2) == b""
        assert harness.recv_exactly(sock, 4) == b"wait"


def test_recv_exactly_is_bounded(start):
    server = start("01_lt_echo.py")
    with server.connect() as sock:
        harness.send_all(sock, b"abc")
        with pytest.raises(harness.Stalled) as caught:
            harness.recv_exactly(sock, 10, timeout=0.3)
        assert caught.value.received == b"abc"


def test_server_dies_with_the_process_that_started_it():
    # Even a SIGKILL of the starter, which runs no atexit handler, takes the server along.
    code = ("import harness, sys, time; s = harness.start('01_lt_echo.py');"
            "print(s.pid, flush=True); time.sleep(60)")
    starter = subprocess.Popen([sys.executable, "-c", code], cwd=NOTEBOOKS,
                               stdout=subprocess.PIPE, text=True)
    try:
        server_pid = int(starter.stdout.readline())
        starter.kill()
        starter.wait(5)
        harness.wait_until(lambda: harness.gone(server_pid), timeout=5, what="the server to exit")
    finally:
        starter.kill()
        starter.wait()


def test_a_paused_server_dies_with_the_process_that_started_it():
    # A starter killed inside `with server.paused():` leaves its server stopped (state T),
    # where a pending SIGTERM would wait for a SIGCONT that nobody sends; SIGKILL does not.
    code = ("import harness, time; s = harness.start('02_et_echo.py');"
            "ctx = s.paused(); ctx.__enter__(); print(s.pid, flush=True); time.sleep(60)")
    starter = subprocess.Popen([sys.executable, "-c", code], cwd=NOTEBOOKS,
                               stdout=subprocess.PIPE, text=True)
    try:
        server_pid = int(starter.stdout.readline())
        assert harness.process_state(server_pid) == "T"
        starter.kill()
        starter.wait(5)
        harness.wait_until(lambda: harness.gone(server_pid), timeout=5,
                           what="the paused server to exit")
    finally:
        starter.kill()
        starter.wait()
        starter.stdout.close()


def test_kernel_shutdown_stops_servers_started_in_a_notebook():
    from jupyter_client.manager import start_new_kernel

    outputs = []
    manager, client = start_new_kernel(kernel_name="python3", cwd=str(NOTEBOOKS))
    try:
        reply = client.execute_interactive(
            "import harness; server = harness.start('02_et_echo.py'); print(server.pid)",
            timeout=30, output_hook=lambda msg: outputs.append(msg))
        assert reply["content"]["status"] == "ok"
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=False)
    pid = int(next(m["content"]["text"] for m in outputs if m["msg_type"] == "stream"))
    harness.wait_until(lambda: harness.gone(pid), timeout=5, what="the server to exit")


def test_reset_makes_the_server_see_econnreset_and_the_trace_parsers_read_it(start):
    server = start("02_et_echo.py", "--trace")
    with server.connect() as polite:
        assert harness.half_close_and_read(polite, b"bye") == b"bye"
    server.wait_for_line("close fd")
    rude = server.connect()
    harness.send_all(rude, b"x" * 100)
    assert harness.recv_exactly(rude, 100) == b"x" * 100
    harness.reset(rude)
    server.wait_for_line(lambda line: line.startswith("close fd") and "finished" not in line)
    polite_fd, rude_fd = harness.accepted_fds(server.lines)  # the same number, reused
    closes = [line for line in server.lines if line.startswith("close fd")]
    assert closes == [f"close fd {polite_fd}: client finished",
                      f"close fd {rude_fd}: Connection reset by peer"]
    assert harness.reports_for(server.lines, rude_fd, "IN") >= 2  # data and EOF, then data
    assert harness.wakes(["wake 4=IN 5=OUT|HUP"]) == [{"4": {"IN"}, "5": {"OUT", "HUP"}}]
    assert harness.interest_changes(["interest fd 7: IN -> IN|OUT", "interest: OUT -> IN"]) \
        == [(7, "IN", "IN|OUT"), (None, "OUT", "IN")]
    assert harness.reads(["read fd 7: 1024 bytes, stopped by EAGAIN"]) == [(7, 1024)]


def test_require_tool_gives_the_path_of_an_installed_tool():
    assert harness.require_tool("sh") == __import__("shutil").which("sh")


def test_a_missing_tool_is_one_sentence_in_a_notebook_naming_its_package(tmp_path):
    """In a kernel where nc is not on the PATH, the cell's error is the one sentence that says
    what to install (the package from .ci/tools.txt), not a traceback."""
    from jupyter_client.manager import start_new_kernel

    errors = []
    manager, client = start_new_kernel(kernel_name="python3", cwd=str(NOTEBOOKS))
    try:
        reply = client.execute_interactive(
            f"import os, harness; os.environ['PATH'] = {str(tmp_path)!r}; harness.require_tool('nc')",
            timeout=30, output_hook=lambda msg: errors.append(msg) if msg["msg_type"] == "error" else None)
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    assert reply["content"]["status"] == "error"
    [error] = errors
    assert error["content"]["ename"] == "ToolMissing"
    [sentence] = error["content"]["traceback"]
    assert sentence.startswith("ToolMissing: nc is not installed here") and sentence.endswith(".")
    assert "sudo apt-get install netcat-openbsd" in sentence
    assert sentence.count(". ") == 0, "one sentence"


def test_source_of_gives_a_lesson_s_own_code_as_written():
    loop = harness.source_of("01_lt_echo.py", "EchoServer.serve", "EchoServer.dispatch")
    assert loop.startswith("def serve(self):\n") and "\n\ndef dispatch(self, fd, ev):\n" in loop
    assert "self.epoll.poll(" in loop  # the lines themselves, dedented, not a summary
    assert loop in harness.show_source("01_lt_echo.py", "EchoServer.serve",
                                       "EchoServer.dispatch").data
    top = harness.source_of("01_lt_echo.py", "listen")
    assert top.startswith("def listen(") and top in (harness.LESSONS / "01_lt_echo.py").read_text()
    with pytest.raises(KeyError, match="01_lt_echo.py has no EchoServer.nothing"):
        harness.source_of("01_lt_echo.py", "EchoServer.nothing")



def test_wakeups_and_every_thread_in_epoll_wait_follow_a_threaded_server():
    # Lesson 08's helpers: the kernel's count of sleeps grows when a client wakes the server,
    # and a server is "every thread in epoll_wait" only once each of its threads is.
    def sleeps(server):  # every thread's count (/proc/TID works for a thread id too)
        return sum(harness.wakeups(int(task.name))
                   for task in Path(f"/proc/{server.pid}/task").iterdir())

    with harness.start("08_workers.py", "--threads", "3") as server:
        assert len(list(Path(f"/proc/{server.pid}/task").iterdir())) == 3
        harness.wait_until(lambda: harness.every_thread_in_epoll_wait(server.pid))
        before = sleeps(server)
        assert harness.echo(server.address, b"wake up") == b"wake up"
        harness.wait_until(lambda: harness.every_thread_in_epoll_wait(server.pid))
        assert sleeps(server) > before
    assert not harness.every_thread_in_epoll_wait(server.pid)  # it has exited


def test_a_server_can_be_given_environment_variables():
    with harness.start("01_lt_echo.py", env={"WORKBOOK_TEST_VARIABLE": "42"}) as server:
        environ = Path(f"/proc/{server.pid}/environ").read_bytes().split(b"\0")
        assert b"WORKBOOK_TEST_VARIABLE=42" in environ
        assert any(item.startswith(b"PATH=") for item in environ)  # added to, not replacing
