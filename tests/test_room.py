"""What an instructor relies on to set up a room: one container recipe, the same in the README
and the instructor guide, installing the tools the workbook drives; the Linux check before the
Python version check (a macOS laptop hears about epoll first); and a wheelhouse that set-up
installs from with no package index."""

import re
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def container_recipe(path):
    """The fenced block that starts with `docker run` in a markdown file, dedented."""
    text = path.read_text(encoding="utf-8")
    blocks = re.findall(r"^( *)```\n(.*?)^\1```", text, flags=re.S | re.M)
    recipes = [textwrap.dedent(body) for _, body in blocks if body.lstrip().startswith("docker run")]
    assert len(recipes) == 1, f"{path.name}: {len(recipes)} container recipes"
    return recipes[0]


def ci_packages():
    """The Debian packages of .ci/tools.txt that CI installs."""
    packages = set()
    for line in (ROOT / ".ci" / "tools.txt").read_text().splitlines():
        fields = line.split()
        if fields and not fields[0].startswith("#") and "ci" in fields[2:]:
            packages.add(fields[0])
    return packages


def test_one_container_recipe_in_the_readme_and_the_guide():
    readme = container_recipe(ROOT / "README.md")
    assert readme == container_recipe(ROOT / "notebooks" / "INSTRUCTOR.md")
    lines = readme.splitlines()
    assert lines[0].startswith("docker run") and "-p 127.0.0.1:8888:8888" in lines[0], \
        "the lab is published on this machine's loopback only"
    assert lines[-1] == 'make lab LAB_ARGS="--ip=0.0.0.0 --port=8888"'
    assert any(line.startswith("git clone ") for line in lines), "clone inside the container"


def test_the_recipe_installs_every_tool_ci_installs():
    install = next(line for line in container_recipe(ROOT / "README.md").splitlines()
                   if "apt-get install" in line)
    packages = set(install.split("apt-get install -y", 1)[1].split())
    # The image's own Python (python:3.x) has venv; Debian's python3-venv would be for another.
    assert packages == ci_packages() - {"python3-venv"}


def fake_python(tmp_path, platform, version):
    """A python3 that says it runs on another platform, at another version."""
    path = tmp_path / "python3"
    path.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import sys
        sys.platform, sys.version_info = {platform!r}, {version!r}
        sys.version = "{'.'.join(map(str, version))} (fake)"
        exec(sys.argv[2])
        """))
    path.chmod(0o755)
    return path


def test_on_macos_the_linux_check_comes_before_the_version_check(tmp_path):
    python = fake_python(tmp_path, "darwin", (3, 9, 6))  # macOS's own python3 is 3.9
    done = subprocess.run(["make", "test", f"PYTHON={python}", f"VENV={tmp_path / 'venv'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "epoll exists only on Linux" in done.stderr and "3.10 or newer" not in done.stderr
    assert not (tmp_path / "venv").exists()


def test_set_up_installs_from_a_wheelhouse_with_no_index(tmp_path):
    def install_line(wheelhouse):
        done = subprocess.run(["make", "-n", "test", f"VENV={tmp_path / 'venv'}",
                               f"WHEELHOUSE={wheelhouse}"],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
        return next(line for line in done.stdout.splitlines() if " pip install " in line)

    empty = tmp_path / "none"
    assert "--no-index" not in install_line(empty)
    wheels = tmp_path / "wheelhouse"
    wheels.mkdir()
    (wheels / "example-1.0-py3-none-any.whl").write_bytes(b"")
    assert f"--no-index --find-links {wheels} -r requirements.txt" in install_line(wheels)
