"""The files that run the workbook elsewhere: CI for forks, and Binder or a JupyterHub.

One list, .ci/tools.txt, names the system tools the tests and notebooks drive. .ci/install-tools
installs it for .ci/run and for the GitHub workflow; binder/apt.txt installs its part in a
Binder image; the README's install lines name only what it lists. The workflow is checked
against GitHub's workflow schema (the copy that check-jsonschema ships, so no network), and
it must run exactly what .ci/run runs, ending with the README's `make test`.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / ".ci" / "tools.txt"
INSTALL = ROOT / ".ci" / "install-tools"
WORKFLOW = ROOT / ".github" / "workflows" / "test.yml"
BINDER = ROOT / "binder"
README = (ROOT / "README.md").read_text(encoding="utf-8")


def tools():
    """[(package, check, {where})] from .ci/tools.txt, in its order."""
    found = []
    for line in TOOLS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            package, check, *where = line.split()
            found.append((package, check, set(where)))
    return found


def load_yaml(path):
    # YAML 1.2, as GitHub reads it: `on:` stays the string "on", not the boolean true.
    return YAML(typ="safe").load(path.read_text())


BREAKAGES = [  # small mistakes in the workflow that the schema check must catch
    ("runs-on: ubuntu-24.04", "run-on: ubuntu-24.04"),          # a misspelt key
    ("  pull_request:\n", "  pull-request:\n"),                 # an event GitHub does not know
    ("timeout-minutes: 30", "timeout-minutes: half an hour"),   # a value of the wrong type
]


@pytest.fixture(scope="module")
def schema_verdicts(tmp_path_factory):
    """{file: [errors]} from check-jsonschema for the workflow and for a broken copy of it
    per mistake in BREAKAGES (one run for all: starting it is what takes time)."""
    folder = tmp_path_factory.mktemp("workflows")
    text = WORKFLOW.read_text()
    files = [WORKFLOW]
    for number, (old, new) in enumerate(BREAKAGES):
        files.append(folder / f"broken-{number}.yml")
        files[-1].write_text(text.replace(old, new))  # unchanged if `old` is gone (see below)
    done = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--output-format", "json",
         "--builtin-schema", "vendor.github-workflows", *map(str, files)],
        capture_output=True, text=True, timeout=60,
    )
    report = json.loads(done.stdout)
    assert not report["parse_errors"], report["parse_errors"]
    verdicts = {str(f): [] for f in files}
    for error in report["errors"]:
        verdicts[error["filename"]].append(f"{error['path']}: {error['message']}")
    assert (done.returncode == 0) == (not report["errors"]), done.stderr
    return verdicts, files


def ci_run_commands():
    """The commands .ci/run runs, in order (not its comments, `set` and `cd`)."""
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    return [line.strip() for line in lines
            if line.strip() and not line.lstrip().startswith(("#", "set ", "cd "))]


def test_the_tool_list_is_well_formed():
    listed = tools()
    packages = [package for package, _, _ in listed]
    assert len(packages) == len(set(packages)), "a package listed twice"
    for package, check, where in listed:
        assert re.fullmatch(r"[a-z0-9][a-z0-9.+-]+", package), package
        assert where and where <= {"ci", "binder"}, f"{package}: where {where}"
        assert "ci" in where, f"{package}: what Binder installs, CI installs too"
        assert check == "import:ensurepip,venv" or re.fullmatch(r"[\w.+-]+", check), check
    # What the README and the contributors' guide promise CI installs.
    for package in ("make", "python3-venv", "curl", "wrk", "netcat-openbsd", "strace", "chromium"):
        assert package in packages


def test_the_workflow_is_valid_for_github(schema_verdicts):
    verdicts, files = schema_verdicts
    assert verdicts[str(WORKFLOW)] == []


@pytest.mark.parametrize("number", range(len(BREAKAGES)))
def test_the_schema_check_rejects_a_broken_workflow(schema_verdicts, number):
    """The check itself works: each small mistake in BREAKAGES is caught."""
    verdicts, files = schema_verdicts
    old, new = BREAKAGES[number]
    assert WORKFLOW.read_text().count(old) == 1, f"the workflow no longer has {old!r} to break"
    assert verdicts[str(files[number + 1])], f"not caught: {BREAKAGES[number]}"


def test_the_workflow_runs_what_ci_runs_on_push_and_pull_request_for_the_oldest_and_newest_python():
    workflow = load_yaml(WORKFLOW)
    assert set(workflow["on"]) == {"push", "pull_request"}
    [job] = workflow["jobs"].values()
    assert job["runs-on"].startswith("ubuntu-")

    # The oldest Python is the one the Makefile insists on; the newest is the other one.
    oldest = re.search(r"sys\.version_info >= \((\d+), (\d+)\)", (ROOT / "Makefile").read_text())
    versions = job["strategy"]["matrix"]["python"]
    assert versions[0] == ".".join(oldest.groups()) and len(versions) == 2
    assert sorted(versions, key=lambda v: tuple(map(int, v.split(".")))) == versions
    assert all(f"Python {v}" in README for v in versions), "the README names the versions CI runs"

    steps = job["steps"]
    assert steps[0]["uses"].startswith("actions/checkout@")
    assert steps[1]["uses"].startswith("actions/setup-python@")
    assert steps[1]["with"]["python-version"] == "${{ matrix.python }}"
    # Exactly .ci/run's commands, in its order: the tools, the exercises, then the README's
    # `make test`, last.
    runs = [step["run"].strip() for step in steps[2:]]
    assert all("uses" not in step for step in steps[2:])
    assert runs == ci_run_commands()
    assert runs[0] == ".ci/install-tools" and runs[-1] == "make test"
    assert "make test" in README.split("## Two commands", 1)[1].split("```")[1]


def test_install_tools_reads_the_one_list(tmp_path):
    """With every listed tool on the PATH but one, --dry-run names exactly that one's package."""
    for package, check, _ in tools():
        if check.startswith("import:"):
            continue
        bin_dir = tmp_path / f"without-{check}"
        bin_dir.mkdir()
        for command in ("bash", "dirname", "python3", *(c for _, c, _ in tools() if c != check)):
            if command.startswith("import:"):
                continue
            found = sys.executable if command == "python3" else __import__("shutil").which(command)
            assert found, f"{command} is needed to run this test"
            (bin_dir / command).symlink_to(found)
        done = subprocess.run([str(bin_dir / "bash"), str(INSTALL), "--dry-run"],
                              env={"PATH": str(bin_dir)}, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"system tools missing: {package}", done.stdout
    done = subprocess.run([str(INSTALL), "--dry-run"], capture_output=True, text=True, timeout=30)
    if os.environ.get("CI"):  # .ci/run installed them first
        assert done.stdout.strip() == "system tools: all installed", done.stdout


def test_binder_installs_the_listed_tools_and_the_pinned_packages():
    listed = [line.partition("#")[0].strip() for line in (BINDER / "apt.txt").read_text().splitlines()]
    assert [p for p in listed if p] == [package for package, _, where in tools() if "binder" in where]

    # Binder reads only binder/ once it exists: its environment.yml installs the same pins as
    # the conda environment at the top, for the same Python.
    top, binder = load_yaml(ROOT / "environment.yml"), load_yaml(BINDER / "environment.yml")

    def pip_files(env, folder):
        [pip] = [d["pip"] for d in env["dependencies"] if isinstance(d, dict)]
        return [(folder / line.split(None, 1)[1]).resolve() for line in pip if line.startswith("-r ")]

    assert pip_files(top, ROOT) == pip_files(binder, BINDER) == [ROOT / "requirements.txt"]
    assert [d for d in top["dependencies"] if isinstance(d, str)] == \
           [d for d in binder["dependencies"] if isinstance(d, str)]
    # No other file Binder would read instead of environment.yml, or before it.
    assert sorted(p.name for p in BINDER.iterdir()) == ["apt.txt", "environment.yml", "postBuild"]

    post = BINDER / "postBuild"
    assert os.access(post, os.X_OK), "binder/postBuild must be executable"
    assert 'python -c "import matplotlib.pyplot"' in post.read_text()


def test_readme_installs_only_listed_tools_and_says_how_to_launch_binder():
    packages = {package for package, _, _ in tools()}
    # (The benchmarks' own needs, a C compiler, are not the tests' and are not listed.)
    setup = README.split("## Benchmarks")[0] + README.split("## Benchmarks")[1].split("\n## ", 1)[1]
    lines = re.findall(r"apt-get install ((?:[\w.+-]+ ?)+)", setup)
    assert lines, "the README says how to install the tools"
    for line in lines:
        named = {word for word in line.split() if not word.startswith("-")}
        assert named <= packages, f"not in .ci/tools.txt: {named - packages}"
    # The launch links name the fork by a placeholder, said to be one, and open a notebook
    # that exists.
    assert "OWNER/epoll-workbook stands for your copy" in README and "placeholders" in README
    binder = re.findall(r"https://mybinder\.org/v2/gh/OWNER/epoll-workbook/HEAD\?urlpath=lab/tree/(\S+)", README)
    puller = re.findall(r"https://HUB/hub/user-redirect/git-pull\?repo=https://github\.com/"
                        r"OWNER/epoll-workbook&branch=main&urlpath=lab/tree/epoll-workbook/(\S+)", README)
    assert binder and puller
    for path in binder + puller:
        assert (ROOT / path).is_file(), path
