"""Shared fixtures: servers that are always stopped, real client tools that must exist, and
the one check that a lesson server still serves a newcomer."""

import functools
import os
import re

import pytest

import harness


def pytest_configure(config):
    # The kernels nbval starts for the notebooks talk over Unix sockets, not TCP ports, as
    # those of tools/outputs.py do (over_unix_sockets says why: a port can be lost to a
    # client's connect() while tests open thousands of connections beside it).
    if config.pluginmanager.hasplugin("nbval"):
        import nbval.kernel
        from outputs import over_unix_sockets
        nbval.kernel.KernelManager = over_unix_sockets(nbval.kernel.KernelManager)


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
    try:
        return harness.require_tool(name)  # its one sentence names the package (.ci/tools.txt)
    except harness.ToolMissing as missing:
        if os.environ.get("CI"):
            pytest.fail(f"{missing} (.ci/run should have installed it)")
        pytest.skip(str(missing))


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


# -- running in parallel -------------------------------------------------------------------
# pytest.ini runs the suite in worker processes (pytest-xdist) with --dist loadfile: all of a
# file's items in one worker, in their order. A notebook needs that (its cells share one
# kernel), and so does a module with a module-scoped fixture (set up once, not once per
# worker); it is also what a run that does not load this file gets (`pytest notebooks/x`).
# Every other module's tests are independent, so they are handed out one by one: a long
# module (one test per lesson) then does not keep one worker busy after the others are done.
# The big units go out first (xdist orders them by their number of items).

SHARED_FIXTURE = re.compile(r"""scope=["'](module|package|session)["']""")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadfile":
        return None  # another --dist asked for on the command line: xdist's own
    from xdist.scheduler import LoadFileScheduling

    class Spread(LoadFileScheduling):
        def _split_scope(self, nodeid):
            path = nodeid.split("::", 1)[0]
            return path if kept_whole(config.rootpath / path) else nodeid

    return Spread(config, log)


@functools.cache
def kept_whole(path):
    """A notebook, or a test module with a fixture its tests share (or one not read)."""
    try:
        return path.suffix != ".py" or bool(SHARED_FIXTURE.search(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError):
        return True
