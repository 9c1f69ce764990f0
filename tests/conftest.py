"""Shared fixtures: servers that are always stopped, real client tools that must exist, and
the one check that a lesson server still serves a newcomer."""

import os
import shutil

import pytest

import harness


@pytest.fixture
def start():
    """start(script, *args) -> a running harness.Server, stopped when the test ends."""
    servers = []

    def _start(script, *args, **kwargs):
        server = harness.start(script, *args, **kwargs)
        servers.append(server)
        return server

    yield _start
    for server in servers:
        server.stop()
        if "Traceback" in server.stderr:  # shown with the failure report: why it died
            print(f"--- {server.script.name} {' '.join(server.args)} wrote on stderr:\n"
                  f"{server.stderr}")


def require_tool(name):
    """The path of a command-line tool a test drives; skip without it, but never under CI."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed; .ci/run should have installed it")
        pytest.skip(f"{name} is not installed (apt-get install {name})")
    return path


def still_serves(server):
    """Assert that `server` answers a new client correctly, whatever lesson it runs, and has
    printed no traceback: what every test of a rude client checks last."""
    name = server.script.name
    if name.startswith("04_"):
        with server.connect() as sock:
            harness.send_all(sock, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            status, _, body = harness.recv_http_response(sock)
            assert (status, body) == (200, b"Hello, world!")
    elif name.startswith("05_"):
        with server.udp_client(timeout=harness.IO_TIMEOUT) as sock:
            payload = os.urandom(2000)
            sock.sendto(payload, server.address)
            assert sock.recv(1 << 16) == payload
    else:
        payload = os.urandom(4096)
        assert harness.echo(server.address, payload) == payload
    assert server.alive(), server.output()
    assert "Traceback" not in server.output(), server.output()
