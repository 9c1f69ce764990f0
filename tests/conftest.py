"""Shared fixtures: servers that are always stopped, and real client tools that must exist."""

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


def require_tool(name):
    """The path of a command-line tool a test drives; skip without it, but never under CI."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed; .ci/run should have installed it")
        pytest.skip(f"{name} is not installed (apt-get install {name})")
    return path
