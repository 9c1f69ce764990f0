"""Lessons 01 (level-triggered) and 02 (edge-triggered): correct under what real clients do.

The rude clients of the classic tutorials' bugs (resets, half-close, never reading...) are in
test_seed_failures.py, for every lesson; this file keeps what is particular to the echoes.
"""

import os
import time

import pytest

import harness
from conftest import still_serves

ECHO_LESSONS = ["01_lt_echo.py", "02_et_echo.py"]
MiB = 1 << 20


@pytest.fixture(params=ECHO_LESSONS)
def server(request, start):
    return start(request.param)


def test_large_payload_comes_back_intact(server):
    payload = os.urandom(8 * MiB)  # far larger than both sides' socket buffers
    assert harness.echo(server.address, payload, timeout=30) == payload


def test_every_byte_value_survives(server):
    payload = bytes(range(256)) * 64 + b"\xff\xfe\x80 not utf-8 \xc3\x28"
    assert harness.echo(server.address, payload) == payload


def test_200_concurrent_clients_each_get_their_own_bytes(server):
    payloads = [os.urandom(1000 + i) for i in range(200)]
    assert harness.exchange(server.address, payloads, timeout=30) == payloads


def test_clients_that_connect_and_leave(server):
    baseline = server.open_fds()
    for _ in range(50):
        server.connect().close()
    for _ in range(20):
        harness.send_all(server.connect(), b"partial request, then gone")
    still_serves(server)
    harness.wait_until(lambda: server.open_fds() == baseline, what="fds back to baseline")


def test_file_descriptors_released_after_clients_leave(server):
    baseline = server.open_fds()
    clients = [server.connect() for _ in range(100)]
    for sock in clients:
        harness.send_all(sock, b"x")
        assert harness.recv_exactly(sock, 1) == b"x"
    assert server.open_fds() == baseline + 100
    for sock in clients:
        sock.close()
    harness.wait_until(lambda: server.open_fds() == baseline, what="fds back to baseline")


def test_idle_server_uses_no_cpu(server):
    clients = [server.connect() for _ in range(20)]
    harness.echo(server.address, b"warm up")
    assert server.asleep_in_epoll(), "the idle server does not wait in epoll_wait"
    used = server.cpu_seconds_over(1.0)
    assert used <= 0.02, f"idle server used {used:.3f} s of CPU in 1 s"
    for sock in clients:
        sock.close()


def test_level_triggered_reports_unread_data_again():
    # ten reads of 1024 bytes, each after its own report
    assert harness.readable_reports("01_lt_echo.py", 10_000, recv_size=1024) == 10


def test_edge_triggered_reports_it_once_and_the_server_drains():
    # one edge for the burst, drained in one go
    assert harness.readable_reports("02_et_echo.py", 10_000, recv_size=1024) == 1


@pytest.mark.parametrize("lesson", ECHO_LESSONS)
def test_epollout_only_while_output_is_pending(start, lesson):
    server = start(lesson, "--trace")
    sock = server.connect()
    sent = harness.fill_without_reading(sock)  # the echo backs up: output pending
    assert len(harness.recv_exactly(sock, sent, timeout=30)) == sent  # now drain it
    harness.send_all(sock, b"ping")
    assert harness.recv_exactly(sock, 4) == b"ping"
    sock.close()
    server.stop()  # all its output is read once it has exited
    changes = harness.interest_changes(server.lines)
    _, before, after = zip(*changes)
    assert before[0] == "IN" and "OUT" in after[0], changes  # output pending: EPOLLOUT on
    assert "OUT" in after, changes  # above the high-water mark: reading paused
    assert after[-1] == "IN", changes  # all delivered: EPOLLOUT off, reading again


def test_a_slow_reader_gets_everything_through_many_throttles(server):
    # The client writes in big pieces and reads in small ones, so the server's output
    # piles up past the high-water mark and drains again many times.
    payload, echoed = harness.slow_reader(server, size=24 * MiB, read_size=16 * 1024,
                                          rcvbuf=None)
    assert echoed == payload
