"""Lesson 01 as a learner meets it: `make lab`, JupyterLab in a real browser, Run All Cells.

The lab is started by the Makefile's own `lab` recipe (with `-o`, so that make takes `.venv`
as it is and never rebuilds it) on a free port, with a token, in a scratch copy of the lesson,
the harness and the exercises, so that nothing JupyterLab saves lands in the workbook. Its
root is that copy: the exercises are reachable through the lab's contents API, as the
notebook's last cell needs. Debian's headless Chromium, driven over the DevTools protocol as
the export tests drive it, opens notebook 01, whose kernel must run in the notebooks folder,
runs every cell through JupyterLab's own command and waits (bounded) for the kernel to go
idle. Each cell's rendered output must then say what the committed notebook says (compared
as nbval compares it, through notebooks/sanitize.cfg), with no error and nothing on stderr.
Then the lab is shut down, and no process it started (server, kernel, lesson server) is left.
"""

import configparser
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from PIL import Image

from conftest import require_tool

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = next((ROOT / "notebooks").glob("01_*.ipynb"))
sys.path.insert(0, str(ROOT / "tools" / "export"))
from browser import Browser, BrowserError  # noqa: E402

START_TIMEOUT = 60  # seconds for the lab to write its server file, and for the page to load
RUN_TIMEOUT = 120  # seconds for every cell of the notebook (nbval gives each cell 60)
STOP_TIMEOUT = 30  # seconds for the lab to stop its kernel and exit

# JupyterLab settings for the lab under test: no question about news (a pop-up, and a fetch
# from outside once answered), and every cell attached to the page so that all are read.
SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
        {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}

# Waits inside the page: `until(what, test, ms)` polls test() every 50 ms until it is truthy.
UNTIL = """const until = async (what, test, ms) => {
    const end = Date.now() + ms;
    for (;;) {
        const value = test();
        if (value) return value;
        if (Date.now() > end) throw new Error('timed out waiting for ' + what);
        await new Promise(done => setTimeout(done, 50));
    }
};"""


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def evaluate_across_reloads(browser, expression, timeout, reloads=2):
    """The value of an expression awaited in the page, evaluated again on the new page if the
    page reloads meanwhile. JupyterLab reloads itself at start-up, into a fresh workspace,
    when it cannot tell soon enough that the one asked for is not open in another window
    (it happens on a busy machine)."""
    for _ in range(reloads + 1):
        try:
            result = browser.send("Runtime.evaluate", {
                "expression": expression, "awaitPromise": True, "returnByValue": True},
                timeout=timeout)
        except BrowserError as error:
            if "navigated or closed" not in str(error):
                raise
            browser.wait_for_event("Page.loadEventFired", timeout)
            continue
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise BrowserError(details.get("exception", {}).get("description") or details.get("text"))
        return result["result"].get("value")
    raise BrowserError(f"the page reloaded more than {reloads} times")


def sanitize(text):
    """What nbval compares: the text after notebooks/sanitize.cfg's replacements."""
    rules = configparser.ConfigParser()
    rules.read(ROOT / "notebooks" / "sanitize.cfg")
    for section in rules.sections():
        text = re.sub(rules[section]["regex"], rules[section]["replace"], text)
    return text.rstrip("\n")


def expected_outputs(path):
    """Per code cell: (what it printed, sanitized, or None when not compared; its pictures)."""
    cells = []
    for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        printed = "".join("".join(out["text"]) for out in cell["outputs"]
                          if out["output_type"] == "stream" and out["name"] == "stdout")
        pictures = sum("image/png" in out.get("data", {}) for out in cell["outputs"])
        cells.append((None if "NBVAL_IGNORE_OUTPUT" in source else sanitize(printed), pictures))
    return cells


def processes_marked(marker):
    """PIDs of the processes whose environment holds marker (all that the lab started)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if marker in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def cmdline(pid):
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # gone meanwhile
        return b""


def answering(ask, *args):
    """ask(*args), or None while the server is not yet listening."""
    try:
        return ask(*args)
    except urllib.error.URLError as error:
        if isinstance(error, urllib.error.HTTPError):
            raise
        return None
    except ConnectionError:
        return None


def describe(pids):
    lines = []
    for pid in pids:
        try:
            lines.append(f"{pid}: " + Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            pass
    return "; ".join(lines)


def scratch_workbook(folder):
    """Lesson 01's notebook, the harness, the lessons and the exercises, with `.venv` the
    environment that runs these tests (the workbook's own .venv under `make test`)."""
    (folder / "notebooks").mkdir(parents=True)
    shutil.copy2(NOTEBOOK, folder / "notebooks")
    shutil.copy2(ROOT / "notebooks" / "harness.py", folder / "notebooks")
    for name in ("lessons", "exercises"):
        shutil.copytree(ROOT / name, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
    (folder / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    return folder


def test_lesson_01_runs_in_jupyterlab_in_a_browser(tmp_path):
    chromium = require_tool("chromium")
    make = require_tool("make")
    work = scratch_workbook(tmp_path / "workbook")
    config = tmp_path / "jupyter-config"
    for name, values in SETTINGS.items():
        path = config / "lab" / "user-settings" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    token = secrets.token_hex(16)
    marker = f"WORKBOOK_LAB_TEST={tmp_path}".encode()
    env = {key: value for key, value in os.environ.items()
           if key not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}  # not a sub-make of `make test`
    env.update(JUPYTER_CONFIG_DIR=str(config), JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
               WORKBOOK_LAB_TEST=str(tmp_path))
    lab_args = (f"--ip=127.0.0.1 --port=0 --IdentityProvider.token={token}"
                " --LabApp.expose_app_in_browser=True")
    log = (tmp_path / "lab.log").open("w")
    lab = subprocess.Popen(
        [make, "-f", str(ROOT / "Makefile"), "-o", ".venv/.pins-installed", "lab",
         f"LAB_ARGS={lab_args}"],
        cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    browser = None
    try:
        browser = Browser(chromium, width=1280, height=900, timeout=START_TIMEOUT)  # starts meanwhile
        browser.open_tab()
        info = wait_for(lambda: next((tmp_path / "runtime").glob("jpserver-*.json"), None)
                        or lab.poll() is not None, START_TIMEOUT, "the lab's server file")
        assert lab.poll() is None, f"make lab exited:\n{(tmp_path / 'lab.log').read_text()}"
        server = json.loads(info.read_text())
        base = f"http://127.0.0.1:{server['port']}/"
        assert server["token"] == token and server["root_dir"] == str(work)

        # The exercise the notebook's last cell names, as JupyterLab's file browser lists it
        # and its editor opens it: through the contents API, from the lab's root.
        def contents(path):
            request = urllib.request.Request(f"{base}api/contents/{path}",
                                             headers={"Authorization": f"token {token}"})
            with urllib.request.urlopen(request, timeout=START_TIMEOUT) as answer:
                return json.load(answer)

        exercise = next((work / "exercises").glob("01_*.py"))
        listed = wait_for(lambda: answering(contents, "exercises"), START_TIMEOUT, "the lab answering")
        assert exercise.name in {item["name"] for item in listed["content"]}, listed
        opened = contents(f"exercises/{exercise.name}")
        assert opened["content"] == exercise.read_text(encoding="utf-8")

        requested = browser.goto(f"{base}lab/tree/notebooks/{NOTEBOOK.name}?token={token}")
        # The notebook open, its kernel started and idle.
        path = evaluate_across_reloads(browser, f"""(async () => {{ {UNTIL}
            await until('JupyterLab', () => window.jupyterapp, {START_TIMEOUT * 1000});
            await jupyterapp.restored;
            const panel = await until('the notebook', () => {{
                const w = jupyterapp.shell.currentWidget;
                return w && w.sessionContext && w.content && w.content.model && w; }}, {START_TIMEOUT * 1000});
            await panel.context.ready;
            await panel.sessionContext.ready;
            await until('an idle kernel', () => panel.sessionContext.session?.kernel?.status === 'idle',
                        {START_TIMEOUT * 1000});
            return panel.context.path; }})()""", START_TIMEOUT)
        assert path == f"notebooks/{NOTEBOOK.name}"
        # The kernel runs in the notebook's folder, as under nbval: `import harness` and the
        # notebook's relative paths depend on it.
        kernels = [pid for pid in processes_marked(marker) if b"ipykernel" in cmdline(pid)]
        assert kernels, f"no kernel among {describe(processes_marked(marker))}"
        assert {os.readlink(f"/proc/{pid}/cwd") for pid in kernels} == {str(work / "notebooks")}

        # Run All Cells, as the Run menu does; the command's promise ends with the last cell.
        started = time.monotonic()
        ran = browser.send("Runtime.evaluate", {
            "expression": "jupyterapp.commands.execute('notebook:run-all-cells')",
            "awaitPromise": True, "returnByValue": True}, timeout=RUN_TIMEOUT)
        assert "exceptionDetails" not in ran, ran["exceptionDetails"]
        cells = browser.evaluate(f"""(async () => {{ {UNTIL}
            const panel = jupyterapp.shell.currentWidget;
            await until('the kernel to go idle', () => panel.sessionContext.session.kernel.status === 'idle',
                        {START_TIMEOUT * 1000});
            // A picture arrives as data; wait (bounded) until each one is decoded.
            await Promise.race([
                Promise.all([...panel.node.querySelectorAll('.jp-OutputArea-output img')]
                            .map(i => i.decode().catch(() => null))),
                new Promise(done => setTimeout(done, 10000))]);
            return panel.content.widgets.filter(cell => cell.model.type === 'code').map(cell => ({{
                count: cell.model.executionCount,
                kinds: cell.model.outputs.toJSON().map(out => out.output_type + ':' + (out.name || '')),
                shown: [...cell.node.querySelectorAll('.jp-OutputArea-output')].map(out => ({{
                    mime: out.getAttribute('data-mime-type'),
                    text: out.textContent,
                    pictures: [...out.querySelectorAll('img')].filter(i => i.complete && i.naturalWidth > 0).length,
                }})),
            }})); }})()""")
        took = time.monotonic() - started
        shot = browser.screenshot(tmp_path / "lab.png")

        for number, cell in enumerate(cells, start=1):
            where = f"cell [{number}] of {NOTEBOOK.name}"
            assert not [k for k in cell["kinds"] if k.startswith(("error", "stream:stderr"))], \
                f"{where}: {[s['text'][-400:] for s in cell['shown']]}"
            assert not [s for s in cell["shown"] if s["mime"] == "application/vnd.jupyter.stderr"], \
                f"{where}: {[s['text'][-400:] for s in cell['shown']]}"
        assert ran["result"].get("value") is True, f"Run All Cells failed: {ran['result']}"
        expected = expected_outputs(work / "notebooks" / NOTEBOOK.name)  # the copy that ran
        assert [cell["count"] for cell in cells] == list(range(1, len(expected) + 1)), \
            "every cell ran once, in order"
        for number, (cell, (printed, pictures)) in enumerate(zip(cells, expected), start=1):
            where = f"cell [{number}] of {NOTEBOOK.name}"
            shown = "".join(s["text"] for s in cell["shown"] if s["mime"] == "application/vnd.jupyter.stdout")
            assert "Traceback" not in shown, where
            if printed is not None:
                assert sanitize(shown) == printed, where
            assert sum(s["pictures"] for s in cell["shown"]) == pictures, f"{where}: pictures"
        requested += [event["params"]["request"]["url"] for event in browser.events
                      if event.get("method") == "Network.requestWillBeSent"]
        outside = [u[:80] for u in requested if not u.startswith((base, "data:", "blob:"))]
        assert not outside, f"fetched from outside: {outside}"
        assert not browser.errors(), f"JavaScript errors: {browser.errors()}"
        image = Image.open(shot).convert("L")
        assert image.size[0] == 1280 and sum(map(bool, image.histogram())) > 16, "a blank page"
        print(f"lesson 01 ran in JupyterLab in {took:.1f} s; screenshot {shot}")

        # Shut the lab down the way its File menu does; make then exits.
        request = urllib.request.Request(f"{base}api/shutdown", method="POST",
                                         headers={"Authorization": f"token {token}"})
        with urllib.request.urlopen(request, timeout=STOP_TIMEOUT) as answer:
            assert answer.status in (200, 204)
        assert lab.wait(timeout=STOP_TIMEOUT) == 0, (tmp_path / "lab.log").read_text()
        deadline = time.monotonic() + STOP_TIMEOUT
        while (left := processes_marked(marker)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not left, f"left running after the lab stopped: {describe(left)}"
    finally:
        if browser is not None:
            browser.close()
        if lab.poll() is None:
            os.killpg(lab.pid, signal.SIGKILL)
            lab.wait(timeout=STOP_TIMEOUT)
        for pid in processes_marked(marker):  # only after a failure above
            os.kill(pid, signal.SIGKILL)
        log.close()
