"""Lesson 05: the UDP echo server on edge-triggered epoll, under what real clients do."""

import importlib.util
import os
import random
import re
import select
import socket
import time
from pathlib import Path

import pytest

import harness

LESSON = "05_udp_echo.py"
MAX_IPV4_PAYLOAD = 65507  # 65,535 minus the 20-byte IPv4 and 8-byte UDP headers


@pytest.fixture
def server(start):
    return start(LESSON)


def client(server, timeout=5.0):
    """A UDP client whose receive buffer is far larger than the server's default one, so
    that replies are never dropped on the client's side."""
    sock = server.udp_client(timeout=timeout)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    return sock


def ask(sock, address, payload):
    sock.sendto(payload, address)
    reply, sender = sock.recvfrom(1 << 16)
    assert sender == address
    return reply


def context_switches(server):
    text = Path(f"/proc/{server.pid}/status").read_text()
    return int(re.search(r"voluntary_ctxt_switches:\s+(\d+)", text).group(1))


# -- the contract (signals, ports, bad flags for all lessons: test_lesson_contract.py) ---

def test_readiness_line_names_the_udp_port(server):
    assert server.lines[0] == f"listening on 127.0.0.1:{server.port}"
    assert server.port > 0
    with client(server) as sock:
        assert ask(sock, server.address, b"ping") == b"ping"


@pytest.mark.parametrize("args, says", [
    (["--bufsize", "0"], "--bufsize must be between 1 and 65536"),
    (["--bufsize", "65537"], "--bufsize must be between 1 and 65536"),
    (["--bufsize", "many"], "invalid int value"),
])
def test_user_mistakes_give_one_line_and_status_2(args, says):
    result = harness.run(LESSON, "--port", "0", *args)
    assert result.returncode == 2
    assert says in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_ipv6_loopback(start):
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("this machine has no IPv6 loopback")
    server = start(LESSON, host="::1")
    assert server.host == "::1"
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        payload = os.urandom(65000)  # beyond IPv4's limit is fine, but stay under 64 KiB
        sock.sendto(payload, ("::1", server.port))
        assert sock.recv(1 << 16) == payload


# -- datagrams come back whole --------------------------------------------------------------

def test_every_size_from_0_to_65507_comes_back_whole(server):
    sizes = sorted(set(range(0, 1600)) | set(range(1600, MAX_IPV4_PAYLOAD, 997))
                   | {8192, 9000, 16384, 32768, 65000, 65535 - 28 - 1, MAX_IPV4_PAYLOAD})
    with client(server) as sock:
        for size in sizes:
            payload = os.urandom(size)
            assert ask(sock, server.address, payload) == payload, f"size {size}"
    assert not [line for line in server.lines if line.startswith(("truncated", "cannot"))]


def test_one_byte_more_than_65507_cannot_even_be_sent(server):
    with client(server) as sock:
        with pytest.raises(OSError) as raised:
            sock.sendto(bytes(MAX_IPV4_PAYLOAD + 1), server.address)
        assert raised.value.strerror == "Message too long"
        assert ask(sock, server.address, b"after") == b"after"


def test_100_datagrams_keep_their_boundaries(server):
    rng = random.Random(5)
    payloads = [rng.randbytes(rng.randrange(0, 300)) for _ in range(100)]
    payloads[10] = payloads[11] = b""  # empty datagrams are messages too
    with client(server) as sock:
        with server.paused():  # one edge for all 100: the server must drain them all
            for payload in payloads:
                sock.sendto(payload, server.address)
        sock.sendto(b"end", server.address)
        assert harness.recv_datagrams_until(sock, b"end") == payloads


def test_100_datagrams_sent_while_it_runs_keep_their_boundaries(server):
    payloads = [f"datagram {i:03d} ".encode() * (i % 7) for i in range(100)]
    with client(server) as sock:
        for payload in payloads:
            sock.sendto(payload, server.address)
        sock.sendto(b"end", server.address)
        assert harness.recv_datagrams_until(sock, b"end") == payloads


def test_50_clients_each_get_their_own_answer(server):
    fds = server.open_fds()
    clients = [client(server) for _ in range(50)]
    try:
        payloads = [f"client {i} ".encode() + os.urandom(i * 20) for i in range(50)]
        with server.paused():
            for sock, payload in zip(clients, payloads):
                sock.sendto(payload, server.address)
        for sock, payload in zip(clients, payloads):
            reply, sender = sock.recvfrom(1 << 16)
            assert (reply, sender) == (payload, server.address)
        assert server.open_fds() == fds  # one socket serves them all
        # and once more, without the pause, in reverse order
        for sock, payload in reversed(list(zip(clients, payloads))):
            assert ask(sock, server.address, payload[::-1]) == payload[::-1]
    finally:
        for sock in clients:
            sock.close()


def test_random_garbage_does_not_hurt_it(server):
    rng = random.Random(55)
    senders = [client(server) for _ in range(8)]
    try:
        for i in range(300):
            size = rng.choice([0, 1, 2, rng.randrange(1, 100), rng.randrange(1, 65508)])
            payload = rng.randbytes(size)
            if i % 10 == 0:
                payload = b"\xff\xfe\x80\xc3\x28 not utf-8"[: size or 7]
            rng.choice(senders).sendto(payload, server.address)
    finally:
        for sock in senders:
            sock.close()  # replies to closed ports bounce as ICMP; the server must not mind
    # The burst may still fill the server's receive buffer, and then the kernel drops our
    # probe too: that is UDP. Like any UDP client, try again (each wait bounded).
    probe = os.urandom(2000)
    with client(server, timeout=1.0) as sock:
        for _ in range(5):
            sock.sendto(probe, server.address)
            try:
                reply = sock.recv(1 << 16)
                break
            except socket.timeout:
                continue
        else:
            pytest.fail("five probes after the garbage, none answered")
    assert reply == probe
    assert server.alive()
    assert "Traceback" not in server.output()


# -- truncation and loss, reported ----------------------------------------------------------

def test_small_buffer_truncates_and_says_so(start):
    server = start(LESSON, "--bufsize", "1024")
    with client(server) as sock:
        fits = os.urandom(1024)
        assert ask(sock, server.address, fits) == fits
        payload = os.urandom(3000)
        reply = ask(sock, server.address, payload)
        assert reply == payload[:1024]
        me = sock.getsockname()[1]
        line = server.wait_for_line("truncated", timeout=5)
    assert line == (f"truncated: a 3000-byte datagram from 127.0.0.1:{me} did not fit the "
                    "1024-byte buffer; only its first 1024 bytes were received, the rest is gone")
    assert sum(line.startswith("truncated") for line in server.lines) == 1  # not for 1024


def test_default_buffer_never_truncates(server):
    with client(server) as sock:
        payload = os.urandom(MAX_IPV4_PAYLOAD)
        assert ask(sock, server.address, payload) == payload
        assert ask(sock, server.address, b"end") == b"end"
    assert not [line for line in server.lines if line.startswith("truncated")]


def numbered(seq, size=1000):
    return seq.to_bytes(4, "big") + bytes((seq * 7 + i) % 251 for i in range(size - 4))


def test_burst_while_paused_loses_some_and_alters_none(start):
    server = start(LESSON, "--trace")
    # Ten times what the server's receive buffer (net.core.rmem_default) holds in payload.
    rmem_default = int(Path("/proc/sys/net/core/rmem_default").read_text())
    burst = max(2000, 10 * rmem_default // 1000)
    with client(server) as sock:
        with server.paused():
            for seq in range(burst):
                sock.sendto(numbered(seq), server.address)
            mark = len(server.lines)
        server.wait_for_line(lambda line: line.startswith("drained"), start=mark, timeout=5)
        sock.sendto(b"end", server.address)
        replies = harness.recv_datagrams_until(sock, b"end", timeout=10)
    lost = burst - len(replies)
    assert 0 < lost < burst
    assert all(reply == numbered(int.from_bytes(reply[:4], "big")) for reply in replies)
    # The kernel's own count arrives with the datagram after the losses ("end") and must
    # account for every datagram that did not come back (our receive buffer is larger).
    line = server.wait_for_line(lambda line: line.startswith("dropped"), timeout=5)
    assert int(re.search(r"discarded (\d+) datagrams", line).group(1)) == lost
    assert server.alive()


def test_one_wake_drains_a_whole_burst(start):
    server = start(LESSON, "--trace")
    with client(server) as sock:
        with server.paused():
            for i in range(20):
                sock.sendto(b"%d" % i, server.address)
            mark = len(server.lines)
        drained = server.wait_for_line(lambda line: line.startswith("drained"), start=mark)
        assert [sock.recv(100) for _ in range(20)] == [b"%d" % i for i in range(20)]
    assert drained == "drained 20 datagrams, then EAGAIN"
    assert harness.wakes(server.lines[mark:]) == [{"socket": {"IN"}}]  # one wake-up, IN


def test_connected_client_hears_econnrefused_once_the_server_is_gone(start):
    server = start(LESSON)
    address = server.address
    with client(server) as sock:
        sock.connect(address)
        sock.send(b"hello")
        assert sock.recv(100) == b"hello"
        assert server.stop() == 0
        sock.send(b"anyone?")
        with pytest.raises(ConnectionRefusedError):
            sock.recv(100)


# -- idle -----------------------------------------------------------------------------------

def test_idle_uses_no_cpu_and_never_wakes(server):
    with client(server) as sock:
        for _ in range(100):
            assert ask(sock, server.address, b"busy") == b"busy"
    assert server.asleep_in_epoll(), "the idle server does not wait in epoll_wait"
    cpu, switches = server.cpu_seconds(), context_switches(server)
    time.sleep(0.5)  # a measuring window, not synchronisation: nothing should happen in it
    assert server.cpu_seconds() - cpu <= 0.01
    assert context_switches(server) == switches  # not one wake-up of epoll_wait


# -- the write path, which loopback never exercises -----------------------------------------
# On loopback a datagram leaves the send buffer the moment sendto queues it at the receiver,
# so sendto never says EAGAIN there. Drive the server object in this process instead, with a
# socket whose sendto says EAGAIN while we tell it to.

def load_lesson():
    path = harness.script_path(LESSON)
    spec = importlib.util.spec_from_file_location("udp_echo_lesson", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FullSendBuffer(socket.socket):
    full = True

    def sendto(self, data, address):
        if self.full:
            raise BlockingIOError(11, "Resource temporarily unavailable")
        return super().sendto(data, address)


@pytest.fixture
def in_process():
    lesson = load_lesson()
    sock = FullSendBuffer(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    server = lesson.UdpEchoServer(sock)
    try:
        yield lesson, server
    finally:
        server.shutdown()


def wait_readable(sock):
    ready, _, _ = select.select([sock], [], [], 5)
    assert ready, "the datagram did not arrive"


def test_replies_wait_in_a_queue_and_epollout_until_sendto_has_room(in_process):
    lesson, server = in_process
    ep = server.endpoint
    address = ep.sock.getsockname()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.settimeout(5)
        for payload in (b"one", b"", b"three"):
            peer.sendto(payload, address)
        wait_readable(ep.sock)
        server.on_readable(ep)
        assert [reply for reply, _ in ep.outbox] == [b"one", b"", b"three"]
        assert ep.wanted() == lesson.READABLE | lesson.WRITABLE
        server.update_interest(ep)
        assert ep.interest == lesson.READABLE | lesson.WRITABLE

        ep.sock.full = False
        server.on_writable(ep)
        server.update_interest(ep)
        assert not ep.outbox and ep.queued == 0 and ep.interest == lesson.READABLE
        assert [peer.recv(100) for _ in range(3)] == [b"one", b"", b"three"]


def test_reading_stops_at_high_water_and_memory_stays_bounded(in_process):
    lesson, server = in_process
    ep = server.endpoint
    address = ep.sock.getsockname()
    size = 60_000
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        for _ in range(40):  # 2.4 MB of replies that cannot go out
            if ep.throttled:
                break
            peer.sendto(bytes(size), address)
            wait_readable(ep.sock)
            server.on_readable(ep)
        assert ep.throttled
        assert lesson.HIGH_WATER <= ep.queued < lesson.HIGH_WATER + size
        assert ep.wanted() == lesson.WRITABLE  # no EPOLLIN: let the kernel hold or drop
        server.update_interest(ep)

        ep.sock.full = False
        server.on_writable(ep)
        assert not ep.throttled and not ep.outbox
        assert ep.wanted() == lesson.READABLE
