"""Lessons 01 (level-triggered) and 02 (edge-triggered): correct under what real clients do."""

import os
import selectors
import signal
import socket
import struct
import time

import pytest

import harness

ECHO_LESSONS = ["01_lt_echo.py", "02_et_echo.py"]
MiB = 1 << 20


@pytest.fixture(params=ECHO_LESSONS)
def server(request, start):
    return start(request.param)


def reset(sock):
    """Close with SO_LINGER 0: the kernel sends RST instead of FIN (ECONNRESET at the peer)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def assert_still_serves(server):
    payload = os.urandom(4096)
    assert harness.echo(server.address, payload) == payload


def test_large_payload_comes_back_intact(server):
    payload = os.urandom(8 * MiB)  # far larger than both sides' socket buffers
    assert harness.echo(server.address, payload, timeout=30) == payload


def test_every_byte_value_survives(server):
    payload = bytes(range(256)) * 64 + b"\xff\xfe\x80 not utf-8 \xc3\x28"
    assert harness.echo(server.address, payload) == payload


def test_200_concurrent_clients_each_get_their_own_bytes(server):
    payloads = [os.urandom(1000 + i) for i in range(200)]
    assert harness.exchange(server.address, payloads, timeout=30) == payloads


def test_half_close_gets_everything_owed(server):
    payload = os.urandom(3 * MiB)
    # send all, shutdown(SHUT_WR), then read until the server closes
    got = harness.exchange(server.address, [payload], half_close=True, timeout=30)[0]
    assert got == payload
    assert_still_serves(server)


def test_fifty_resets_do_not_stop_the_server(server):
    for i in range(50):
        sock = server.connect()
        harness.send_all(sock, os.urandom(64 * 1024 if i % 2 else 10))
        reset(sock)  # with data unread and the echo still on its way
    assert_still_serves(server)
    assert server.alive()


def test_reset_while_the_server_is_writing(server):
    sock = server.connect()
    sock.setblocking(False)
    sent = 0
    try:  # fill the pipe without reading: the server has output pending
        while sent < 16 * MiB:
            sent += sock.send(bytes(256 * 1024))
    except BlockingIOError:
        pass
    reset(sock)
    assert_still_serves(server)


def test_clients_that_connect_and_leave(server):
    baseline = server.open_fds()
    for _ in range(50):
        server.connect().close()
    for _ in range(20):
        harness.send_all(server.connect(), b"partial request, then gone")
    assert_still_serves(server)
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


def test_client_that_never_reads_cannot_grow_the_server(server):
    rss_before = server.rss_bytes()
    greedy = server.connect()
    sent = harness.fill_without_reading(greedy)  # the kernel pushes back: backpressure
    grown = server.rss_bytes() - rss_before
    assert grown < 8 * MiB, f"server grew by {grown} bytes for one client that never reads"
    assert sent < 64 * MiB
    assert_still_serves(server)  # and the others are served meanwhile
    greedy.close()


def test_idle_server_uses_no_cpu(server):
    clients = [server.connect() for _ in range(20)]
    harness.echo(server.address, b"warm up")
    before = server.cpu_seconds()
    time.sleep(1.0)  # a measuring window, not synchronisation
    used = server.cpu_seconds() - before
    assert used <= 0.02, f"idle server used {used:.3f} s of CPU in 1 s"
    wchan = open(f"/proc/{server.pid}/wchan").read()
    assert "epoll" in wchan, f"idle server waits in {wchan!r}, not in epoll_wait"
    for sock in clients:
        sock.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("lesson", ECHO_LESSONS)
def test_signal_stops_the_server_cleanly(start, lesson, signum):
    server = start(lesson)
    clients = [server.connect() for _ in range(5)]
    harness.echo(server.address, b"busy")
    began = time.monotonic()
    server.send_signal(signum)
    server.proc.wait(timeout=5)
    assert time.monotonic() - began < 1.0
    assert server.proc.returncode == 0, server.output()
    assert "Traceback" not in server.output()
    for sock in clients:  # the server closed them: EOF, not a hang
        assert harness.recv_until_eof(sock, timeout=2) == b""
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
    changes = [line.split(": ", 1)[1] for line in server.lines if line.startswith("interest")]
    before, after = zip(*(change.split(" -> ") for change in changes))
    assert before[0] == "IN" and "OUT" in after[0], changes  # output pending: EPOLLOUT on
    assert "OUT" in after, changes  # above the high-water mark: reading paused
    assert after[-1] == "IN", changes  # all delivered: EPOLLOUT off, reading again


def test_a_slow_reader_gets_everything_through_many_throttles(server):
    # The client writes in big pieces and reads in small ones, so the server's output
    # piles up past the high-water mark and drains again many times over.
    payload = os.urandom(24 * MiB)
    sock = server.connect()
    sock.setblocking(False)
    out, got = memoryview(payload), bytearray()
    deadline = time.monotonic() + 60
    with selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        while len(got) < len(payload):
            assert time.monotonic() < deadline, f"stalled after {len(got)} of {len(payload)}"
            for _, mask in sel.select(1.0):
                if mask & selectors.EVENT_WRITE and out:
                    try:
                        out = out[sock.send(out[:256 * 1024]):]
                    except BlockingIOError:
                        pass
                    if not out:
                        sel.modify(sock, selectors.EVENT_READ)
                if mask & selectors.EVENT_READ:
                    try:
                        got += sock.recv(16 * 1024)
                    except BlockingIOError:
                        pass
    sock.close()
    assert got == payload
