"""The exercises, both ways, and the checker a learner reads.

Every test here works on the pristine starting point, derived from the solution by
tools/exercises.py into a scratch folder, and never reads exercises/NN_*.py: those are the
learner's files, and `make test` must say the same before, during and after the exercises.
"""

import ast
import difflib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check = _load("exercise_check", ROOT / "exercises" / "check.py")
tool = _load("exercise_tool", ROOT / "tools" / "exercises.py")

EXERCISES = check.load_exercises()
each_exercise = pytest.mark.parametrize("exercise", EXERCISES, ids=lambda ex: ex.name[:2])


@pytest.fixture
def starts(tmp_path):
    """A folder of pristine starting points, derived from solutions/ (in milliseconds: each
    test derives its own, so that the tests of this module can run in any worker)."""
    folder = tmp_path / "starts"
    folder.mkdir()
    for ex in EXERCISES:
        (folder / ex.name).write_text(tool.pristine_start(ex.name))
    return folder


def test_every_solution_has_a_check():
    assert [ex.name for ex in EXERCISES] == tool.solution_names()
    assert len(EXERCISES) >= 2


@each_exercise
def test_unsolved_start_fails(exercise, starts):
    ok, detail = exercise.run(starts)
    assert not ok, f"the unsolved {exercise.name} already passes: {detail}"


@each_exercise
def test_solution_passes(exercise):
    ok, detail = exercise.run(ROOT / "solutions")
    assert ok, detail


# -- the start differs from the solution only where it says TODO ---------------------------

def unmarked_changes(solution_source):
    """The start's lines that the solution changes without a TODO saying so.

    Two allowances, and no others: a line the solution keeps but indents differently (the
    answer may wrap kept lines in a loop), and a blank line.
    """
    start, answer, blocks = tool.split(solution_source)
    if not blocks:
        return ["(no exercise block at all)"]
    old = [line.strip() for line in start.splitlines()]
    new = [line.strip() for line in answer.splitlines()]
    found = []
    matcher = difflib.SequenceMatcher(None, old, new, autojunk=False)
    for tag, i1, i2, _, _ in matcher.get_opcodes():
        if tag != "equal":
            found += [line for line in old[i1:i2] if line and "TODO" not in line]
    for number, start_lines, _ in blocks:  # each place to change says so
        if not any("TODO" in line for line in start_lines):
            found.append(f"(the block at line {number} has no TODO line)")
    return found


@each_exercise
def test_start_differs_from_solution_only_in_todo_lines(exercise):
    source = (ROOT / "solutions" / exercise.name).read_text()
    assert unmarked_changes(source) == []


def test_the_todo_rule_sees_an_unmarked_change():
    marker = '    # exercise: the starting point has the "#|" lines, not the answer below\n'
    source = ("def f():\n" + marker + "    #| # TODO: return the answer\n"
              "    #| x = 41\n    # answer:\n    x = 42\n    # end of the answer\n"
              "    return x\n")
    assert unmarked_changes(source) == ["x = 41"]
    assert unmarked_changes(source.replace("x = 41", "x = 41  # TODO")) == []
    start = tool.split(source)[0]
    assert start == "def f():\n    # TODO: return the answer\n    x = 41\n    return x\n"


def default_port(source):
    """The default of the script's `--port`, as its argparse call declares it."""
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument"
                and node.args and getattr(node.args[0], "value", None) == "--port"):
            return next(ast.literal_eval(k.value) for k in node.keywords if k.arg == "default")
    raise AssertionError("no --port argument")


@each_exercise
def test_an_exercise_listens_on_its_own_port_beside_its_lesson(exercise):
    # Lesson NN listens on 9000+NN; its exercise on 9010+NN, so that both run at once.
    port = 9010 + int(exercise.name[:2])
    assert default_port((ROOT / "solutions" / exercise.name).read_text()) == port
    assert default_port(tool.pristine_start(exercise.name)) == port
    # Its docstring shows how to run it, and a client for it, on that port.
    said = ast.get_docstring(ast.parse(tool.pristine_start(exercise.name))).splitlines()
    assert [line for line in said if f"exercises/{exercise.name}" in line and f":{port}" in line]
    assert [line for line in said if f"--port {port}" in line or f"127.0.0.1:{port}/" in line]


@pytest.mark.parametrize("exercise", EXERCISES, ids=lambda ex: ex.name[:2])
def test_the_notebook_checks_its_own_exercise_alone(exercise):
    # `make check` alone checks every exercise and sends the learner to exercise 01's hint.
    number = exercise.name[:2]
    notebook = next((ROOT / "notebooks").glob(f"{number}_*.ipynb"))
    said = [text for cell in json.loads(notebook.read_text(encoding="utf-8"))["cells"]
            if cell["cell_type"] == "markdown"
            for text in ("".join(cell["source"]), cell["metadata"].get("notes", ""))]
    commands = [m.group(0) for text in said for m in re.finditer(r"make check\b(?: \d+)?", text)]
    assert f"make check {number}" in commands, f"{notebook.name} never says make check {number}"
    assert set(commands) == {f"make check {number}"}, f"{notebook.name} says {commands}"


def test_the_contributors_command_runs_on_every_exercise():
    # `python tools/exercises.py` compares exercises/ with the derived starts. A learner's
    # exercises/ differs, and rightly, so here it only has to run and name every exercise.
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "exercises.py")],
                            capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert result.returncode in (0, 1), result.stderr
    assert all(f"exercises/{ex.name}" in result.stdout for ex in EXERCISES), result.stdout


# -- known wrong answers: each must fail, and say which client broke it ---------------------
# (exercise, what is wrong, a line of the solution, what it becomes, words the failure says)

BROKEN = [
    ("03_drain_recv.py", "no return once the connection is closed or throttled",
     "            if conn.closed or conn.throttled:\n", "            if False:\n",
     ["a client that reset the connection mid-send (its echo still unread) crashed your "
      "server: KeyError", "in close)"]),
    ("03_drain_recv.py", "never stops reading",
     "            self.throttled = True\n", "            pass\n",
     ["a client that sends and never reads", "memory grow without bound"]),
    ("01_connection_limit.py", "never stops reading",
     "            self.throttled = True\n", "            pass\n",
     ["a client that sends and never reads", "memory grow without bound"]),
    ("01_connection_limit.py", "closes at EOF while it still owes an echo",
     "            if not conn.outbox:\n                self.close(conn, \"client finished\")\n",
     "            self.close(conn, \"client finished\")\n",
     ["half-closed (shutdown SHUT_WR)", "got only the first", "lost what it owed"]),
    ("02_shutdown_report.py", "send errors are not caught",
     "            except OSError as e:  # EPIPE, ECONNRESET: the client stopped listening\n"
     "                self.close(conn, e.strerror)\n                return\n", "",
     ["a client that reset the connection mid-send", "crashed your server: Connection",
      "in on_writable"]),
    ("04_max_requests.py", "parses on while the client reads no answers",
     "                    conn.throttled = True\n                    break\n",
     "                    pass\n",
     ["a client that pipelines requests and never reads", "memory grow without bound"]),
    ("04_max_requests.py", "a malformed request line raises ValueError",
     'raise HttpError(400, "the request line must be METHOD TARGET VERSION")',
     'raise ValueError("the request line must be METHOD TARGET VERSION")',
     ["a client that sent garbage bytes", "crashed your server: ValueError"]),
    ("09_unregister_first.py", "closes before it unregisters",
     "        self.epoll.unregister(fd)  # before close: afterwards the fd number means nothing\n"
     "        conn.sock.close()\n",
     "        conn.sock.close()\n        self.epoll.unregister(fd)\n",
     ["a client left during a snapshot", "and your server crashed: OSError"]),
    ("05_udp_empty_datagram.py", "a receive buffer of 1 KiB",
     "BUFSIZE = 64 * 1024\n", "BUFSIZE = 1024\n",
     ["a client that sent a 65507-byte datagram", "got 1024 bytes back"]),
]


@pytest.mark.parametrize("name, wrong, line, becomes, says", BROKEN,
                         ids=[f"{b[0][:2]}-{b[1].replace(' ', '-')}" for b in BROKEN])
def test_a_wrong_answer_fails_and_says_which_client_broke_it(tmp_path, name, wrong, line,
                                                             becomes, says):
    _, solution, _ = tool.split((ROOT / "solutions" / name).read_text())
    assert solution.count(line) == 1, f"the line to break is no longer in solutions/{name}"
    (tmp_path / name).write_text(solution.replace(line, becomes))
    status, out, err = run_check("--dir", str(tmp_path), name[:2])  # as a learner runs it
    assert status == 1, f"solutions/{name} with {wrong} passes its check:\n{out}"
    first_line = out.splitlines()[1]
    assert all(words in first_line for words in says), out
    # The learner's own traceback may follow, to help; never one of the checker's.
    assert err == "" and not any(part in out for part in ("check.py", "hostile.py", "harness"))


# -- what a learner sees -------------------------------------------------------------------

def run_check(*args, root=ROOT):
    """`python exercises/check.py ARGS` in the workbook at root: (status, stdout, stderr)."""
    result = subprocess.run([sys.executable, str(root / "exercises" / "check.py"), *args],
                            capture_output=True, text=True, timeout=120, cwd=root,
                            stdin=subprocess.DEVNULL)
    return result.returncode, result.stdout, result.stderr


def test_make_check_with_a_number_checks_that_exercise_alone():
    # What the README and the speaker notes tell people to type; -o: never rebuild .venv here.
    result = subprocess.run(["make", "-s", "-o", ".venv/.pins-installed", "check", "04"],
                            capture_output=True, text=True, timeout=120, cwd=ROOT,
                            stdin=subprocess.DEVNULL)
    named = [line.split()[1] for line in result.stdout.splitlines()
             if line.startswith(("pass  ", "FAIL  "))]
    assert named == ["04_max_requests.py"], result.stdout + result.stderr
    assert "No rule to make target" not in result.stderr


def test_a_one_digit_number_is_its_two_digit_exercise():
    status, out, err = run_check("--solutions", "4")
    named = [line.split()[1] for line in out.splitlines() if line.startswith(("pass  ", "FAIL  "))]
    assert (status, named, err) == (0, ["04_max_requests.py"], ""), out + err


@pytest.mark.parametrize("names", [["12"], ["04", "12"], ["x"]], ids=["12", "04-12", "x"])
def test_a_number_that_matches_nothing_lists_the_exercises(names):
    status, out, err = run_check("--solutions", *names)
    assert status == 2 and out == "", out  # nothing checked, not even the ones that match
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"no exercise matches {names[-1]}; "), err
    assert all(ex.name.removesuffix(".py") in lines[0] for ex in EXERCISES), err


@pytest.mark.parametrize("source, says", [
    ("def main(:\n    pass\n", "03_drain_recv.py, line 1: "),
    ("if True:\npass\n", "expected an indented block"),
    ("import sys\nundefined_name\n", "your server stopped before it listened: NameError"),
    ("import sys\nprint('no listening line')\n", "expected 'listening on HOST:PORT'"),
], ids=["syntax-error", "indentation", "name-error", "no-listening-line"])
def test_a_file_that_cannot_run_is_one_line_not_a_traceback(tmp_path, source, says):
    (tmp_path / "03_drain_recv.py").write_text(source)
    status, out, err = run_check("--dir", str(tmp_path), "03")
    assert status == 1 and err == ""
    lines = out.splitlines()
    assert lines[0].startswith("FAIL  03_drain_recv.py")
    assert says in lines[1] and not lines[2].strip(), out  # one line, then the summary
    assert "Traceback" not in out and "check.py" not in out


def test_a_missing_file_is_one_line(tmp_path):
    status, out, _ = run_check("--dir", str(tmp_path), "05")
    assert status == 1
    assert "05_udp_empty_datagram.py is missing" in out.splitlines()[1]
    assert "Traceback" not in out


# -- the learner's progress changes nothing for `make test`, and `make check` follows it ---
# A scratch copy of the exercise parts of the workbook, with exercises/ as a learner leaves
# it. Exercises 02 and 04 stand for the rest: their checks are the quickest, and a test
# that read exercises/ would fail on them as soon as they are solved.

STATES = {"untouched": [], "half done": ["02", "03"], "all done": [ex.name[:2] for ex in EXERCISES]}


@pytest.mark.parametrize("state", STATES)
def test_the_learners_progress_leaves_the_tests_green(tmp_path, state):
    for part in ("exercises", "solutions"):
        shutil.copytree(ROOT / part, tmp_path / part,
                        ignore=shutil.ignore_patterns("__pycache__"))
    for part in ("tools/exercises.py", "tests/test_exercises.py", "tests/conftest.py",
                 "notebooks/harness.py", "pytest.ini"):
        (tmp_path / part).parent.mkdir(exist_ok=True)
        shutil.copy(ROOT / part, tmp_path / part)
    solved = [ex.name for ex in EXERCISES if ex.name[:2] in STATES[state]]
    for ex in EXERCISES:  # the copy starts pristine, whatever this checkout's learner did
        done = ex.name in solved
        (tmp_path / "exercises" / ex.name).write_text(
            (ROOT / "solutions" / ex.name).read_text() if done else tool.pristine_start(ex.name))

    if solved:  # untouched is the state this very run is in
        tests = subprocess.run(  # no plugins: the notebooks' ones take seconds to load
            [sys.executable, "-m", "pytest", "-q", "-o", "addopts=", "-W", "ignore",
             "tests/test_exercises.py", "-k", "unsolved_start_fails and (02 or 04)"],
            capture_output=True, text=True, timeout=120, cwd=tmp_path,
            stdin=subprocess.DEVNULL, env={**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"})
        assert tests.returncode == 0 and "2 passed" in tests.stdout, tests.stdout[-3000:]

    status, out, _ = run_check("02", "04", root=tmp_path)  # what `make check` says there
    chosen = [ex for ex in EXERCISES if ex.name[:2] in ("02", "04")]
    passing = [line.split()[1] for line in out.splitlines() if line.startswith("pass  ")]
    assert passing == [ex.name for ex in chosen if ex.name in solved], out
    unsolved = [ex for ex in chosen if ex.name not in solved]
    if not unsolved:
        assert status == 0 and "All 2 exercises pass." in out, out
    else:
        assert status == 1
        assert f"Next: exercises/{unsolved[0].name}, the lines marked TODO." in out
        assert f"Hint: {unsolved[0].hint}" in out


# -- a hint guides; it never hands over the answer ------------------------------------------
# The notebooks send a learner to `make check NN` before they have tried anything, and the
# hint comes with the first failure: it says where to look and what matters, not what to type.

def quotable(answer_line):
    """What a hint could quote of one line of an answer block: the code without a trailing
    comment or closing colon, and a comment's words; spaces squeezed, short ones left out
    (`break`, `else` fit in any sentence)."""
    line = answer_line.strip()
    code, _, comment = ("", "", line) if line.startswith("#") else line.partition("  # ")
    parts = [" ".join(code.rstrip(":").split()), " ".join(comment.lstrip("# ").split())]
    return [part for part in parts if len(part) > 12]


@each_exercise
def test_a_hint_never_quotes_its_answer(exercise):
    _, _, blocks = tool.split((ROOT / "solutions" / exercise.name).read_text())
    hint = " ".join(exercise.hint.split())
    quoted = [part for _, _, answer in blocks for line in answer for part in quotable(line)
              if part in hint]
    assert quoted == [], f"the hint of {exercise.name} hands over its answer: {quoted}"


# Python that a hint has no use for: an assignment, an augmented assignment or a comparison,
# a call with arguments, an index or a slice, a loop header.
CODE = re.compile(r"[-+*/|&<>=!]=|(?<![-<>=!])=(?!=)|\s[<>]\s|\w\([^()\s][^()]*\)"
                  r"|\w\[[^\]]*\]|\bwhile True\b")


@each_exercise
def test_a_hint_is_words_and_ends_where_the_answer_is(exercise):
    assert CODE.findall(exercise.hint) == [], f"the hint of {exercise.name} reads as code"
    stuck = f"Stuck: solutions/{exercise.name} has the answer beside the starting point's lines."
    assert exercise.hint.endswith(stuck), exercise.hint


def test_the_hint_rules_see_code():
    assert quotable("    keep_alive = False  # the last one\n") == ["keep_alive = False"]
    assert quotable("    if a_name and conn.served >= limit:\n") == [
        "if a_name and conn.served >= limit"]
    assert quotable("    # Bytes stay bytes: an echo\n") == ["Bytes stay bytes: an echo"]
    assert quotable("    break\n") == []
    for code in ("conn.served += 1", "timeout = 0", "n < RECV_SIZE", "fail(...) with it",
                 "self._scheduled[0][0]", "wrap it in while True"):
        assert CODE.findall(f"In respond(), {code}, then stop."), code
    assert CODE.findall("In on_accept(), after accept() (see REFUSAL), --max-fds, a -1.") == []
