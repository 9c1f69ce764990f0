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


def gone(pid):
    """True once pid is no process, or only a zombie waiting for its parent."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


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


def test_output_is_captured_not_inherited(start):
    server = start("01_lt_echo.py", "--trace")
    harness.echo(server.address, b"x")
    assert server.wait_for_line("accept fd")
    server.stop()
    assert server.lines[0].startswith("listening on 127.0.0.1:")


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
        harness.wait_until(lambda: gone(server_pid), timeout=5, what="the server to exit")
    finally:
        starter.kill()
        starter.wait()


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
    harness.wait_until(lambda: gone(pid), timeout=5, what="the server to exit")
