"""The workbook as a whole: the two commands, the layout, the committed notebooks."""

import configparser
import json
import os
import re
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import harness

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
LESSONS = sorted((ROOT / "lessons").glob("[0-9][0-9]_*.py"))


def test_second_setup_installs_nothing():
    # `make -q` exits 0 when the target is up to date: the venv matches the pins.
    result = subprocess.run(["make", "-q", ".venv/.pins-installed"], cwd=ROOT, timeout=30)
    assert result.returncode == 0, "the venv is older than requirements.txt; make would reinstall"


def test_conda_route_uses_the_same_pins():
    assert "-r requirements.txt" in (ROOT / "environment.yml").read_text()


def test_make_lab_serves_the_workbook_and_opens_on_the_notebooks(tmp_path):
    """`make lab`'s root is the workbook, so that a learner opens and edits exercises/ (each
    notebook's last cell sends them there), solutions/ and lessons/ in JupyterLab; the URL it
    prints, and its default page, open the notebooks folder."""
    token = "workbook-test"
    log = tmp_path / "lab.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen(
            ["make", "-s", "lab", f"LAB_ARGS=--ServerApp.port=0 --IdentityProvider.token={token}"],
            cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
    try:
        def url_printed():
            match = re.search(r"(http://127\.0\.0\.1:\d+)(/lab\S*)\?token=", log.read_text())
            return match and match.groups()

        url, page = harness.wait_until(url_printed, timeout=60, what="JupyterLab printing its URL")
        assert page == "/lab/tree/notebooks", f"make lab prints {url}{page}, not the notebooks folder"

        def listing(folder):
            request = urllib.request.Request(f"{url}/api/contents/{folder}",
                                             headers={"Authorization": f"token {token}"})
            with urllib.request.urlopen(request, timeout=5) as response:
                return {item["name"] for item in json.load(response)["content"]}

        def answering():
            try:
                return listing("")
            except OSError:  # printed its URL a moment before it listens
                return None

        top = harness.wait_until(answering, timeout=30, what="JupyterLab answering")
        assert {"notebooks", "exercises", "solutions", "lessons"} <= top, top
        assert {nb.name for nb in NOTEBOOKS} <= listing("notebooks")
        exercises = {path.name for path in (ROOT / "solutions").glob("[0-9][0-9]_*.py")}
        assert exercises and exercises <= listing("exercises"), "the exercises cannot be opened"

        class Stay(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args, **kwargs):
                return None  # look at the redirect itself

        try:
            urllib.request.build_opener(Stay).open(f"{url}/?token={token}", timeout=5)
            raise AssertionError("the lab's front page does not redirect")
        except urllib.error.HTTPError as answer:
            assert answer.code == 302 and answer.headers["Location"].startswith("/lab/tree/notebooks"), \
                f"the lab opens on {answer.headers['Location']}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_every_lesson_has_a_notebook_and_every_exercise_a_solution():
    assert [p.stem for p in LESSONS] == [p.stem for p in NOTEBOOKS]
    exercises = sorted(p.name for p in (ROOT / "exercises").glob("[0-9][0-9]_*.py"))
    solutions = sorted(p.name for p in (ROOT / "solutions").glob("[0-9][0-9]_*.py"))
    assert exercises == solutions and exercises


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_executed_and_clean(notebook):
    cells = json.loads(notebook.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code" and "".join(c["source"]).strip()]
    assert all(c["execution_count"] is not None for c in code), "commit the executed notebook"
    counts = [c["execution_count"] for c in code]
    assert counts == list(range(1, len(code) + 1)), "run top to bottom in a fresh kernel"
    for cell in code:
        for output in cell["outputs"]:
            assert output["output_type"] != "error", "".join(cell["source"])[:80]
            assert output.get("name") != "stderr", "stderr in a stored output"


def test_the_test_command_checks_every_notebook_strictly():
    # `make test` (and .ci/run, which calls it) runs plain pytest, so pytest.ini decides:
    # nbval strict (--nbval: every stored output compared), never --nbval-lax, over notebooks/.
    ini = configparser.ConfigParser()
    ini.read(ROOT / "pytest.ini")
    options = ini["pytest"]["addopts"].split()
    assert "--nbval" in options and "--nbval-lax" not in options, options
    assert "notebooks" in ini["pytest"]["testpaths"].split()
    recipe = re.search(r"^test:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.M)
    assert recipe and "-m pytest" in recipe.group(1), "make test should run pytest"
    for path in ("Makefile", ".ci/run", "pytest.ini"):
        text = (ROOT / path).read_text()
        assert "nbval-lax" not in text and "no:nbval" not in text, path
    assert re.search(r"^make test$", (ROOT / ".ci/run").read_text(), re.M)
