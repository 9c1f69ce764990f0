"""lessons/lessons.toml is the one list of lessons: each lesson in it has every file it needs,
nothing numbered is left out of it, and the lesson tables made from it are up to date.

Adding a lesson means adding an entry to lessons/lessons.toml; these tests then name what is
still missing, and `make tables` rewrites the tables of README.md and notebooks/INSTRUCTOR.md.
"""

import re
from pathlib import Path

import pytest

import lesson_list  # tools/lesson_list.py (pytest.ini puts tools/ on the path)

ROOT = Path(__file__).resolve().parent.parent

LESSONS = lesson_list.load()
each_lesson = pytest.mark.parametrize("lesson", LESSONS, ids=lambda ls: ls.name)
DEFAULT_PORT = re.compile(r'add_argument\(\s*"--port",[^)]*?default=(\d+)')


def test_lessons_are_numbered_01_02_and_so_on_in_order():
    assert [ls.number for ls in LESSONS] == [f"{n:02d}" for n in range(1, len(LESSONS) + 1)]
    for ls in LESSONS:
        assert re.fullmatch(r"\d\d_[a-z0-9_]+", ls.name), ls.name
        assert ls.exercise[:3] == ls.name[:3], f"{ls.name}: its exercise {ls.exercise} has another number"


def test_every_lesson_has_its_own_port():
    assert [ls.port for ls in LESSONS] == [9000 + int(ls.number) for ls in LESSONS]


@each_lesson
def test_the_lesson_has_every_file_it_needs(lesson):
    missing = [name for name in lesson.files if not (ROOT / name).is_file()]
    assert not missing, f"lesson {lesson.name} is listed in lessons/lessons.toml; missing: {missing}"


@each_lesson
def test_the_script_listens_by_default_on_the_listed_port(lesson):
    source = (ROOT / "lessons" / f"{lesson.name}.py").read_text(encoding="utf-8")
    found = DEFAULT_PORT.findall(source)
    if lesson.kind == "demo" and not found:
        return  # demonstrations that never listen need no --port
    assert found == [str(lesson.port)], (
        f"lessons/{lesson.name}.py: --port should default to {lesson.port} (lessons/lessons.toml); "
        f"its add_argument(\"--port\", ..., default=N) lines give {found}")


@each_lesson
def test_the_script_serves_what_its_kind_says(lesson):
    source = (ROOT / "lessons" / f"{lesson.name}.py").read_text(encoding="utf-8")
    if lesson.kind == "demo":  # one sub-command for each demonstration, any kind of socket
        assert "add_subparsers" in source, f"{lesson.name}: a demo lesson has sub-commands"
        return
    assert ("SOCK_DGRAM" in source) == (lesson.kind == "udp"), lesson.kind
    if lesson.kind == "http":  # (an echo lesson may speak HTTP too, under a flag)
        assert "HTTP/1.1" in source


def test_scripts_of_a_kind():
    assert lesson_list.scripts() == [f"{ls.name}.py" for ls in LESSONS]
    tcp = lesson_list.scripts("echo", "http")
    assert tcp and set(tcp) == {f"{ls.name}.py" for ls in LESSONS if ls.kind in ("echo", "http")}
    assert lesson_list.servers() == [f"{ls.name}.py" for ls in LESSONS if ls.kind != "demo"]
    with pytest.raises(ValueError, match="no lesson kind"):
        lesson_list.scripts("tcp")


@pytest.mark.parametrize("folder, suffix, listed", [
    ("lessons", ".py", lambda ls: ls.name),
    ("notebooks", ".ipynb", lambda ls: ls.name),
    ("exercises", ".py", lambda ls: ls.exercise),
    ("solutions", ".py", lambda ls: ls.exercise),
    ("exercises/checks", ".py", lambda ls: ls.exercise),
], ids=["lessons", "notebooks", "exercises", "solutions", "checks"])
def test_nothing_numbered_is_left_out_of_the_list(folder, suffix, listed):
    present = {p.stem for p in (ROOT / folder).glob(f"[0-9][0-9]_*{suffix}")}
    unlisted = sorted(present - {listed(ls) for ls in LESSONS})
    assert not unlisted, f"in {folder}/ but not in lessons/lessons.toml: {unlisted}"


@pytest.mark.parametrize("table", lesson_list.TABLES, ids=lambda t: t[0])
def test_the_lesson_table_is_up_to_date(table):
    name, heading, make = table
    lines = (ROOT / name).read_text(encoding="utf-8").splitlines()
    start, end = lesson_list.find_table(lines, heading, name)
    assert lines[start:end] == make(LESSONS), (
        f"{name}: the lesson table differs from lessons/lessons.toml; `make tables` rewrites it")


def test_make_tables_rewrites_only_the_tables(tmp_path):
    """On a copy: an out-of-date table is rewritten, every other line is kept."""
    for name, _, _ in lesson_list.TABLES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text((ROOT / name).read_text(encoding="utf-8"), encoding="utf-8")
    readme = tmp_path / "README.md"
    original = readme.read_text(encoding="utf-8")
    row = next(line for line in original.splitlines() if line.startswith("| 01 |"))
    readme.write_text(original.replace(row, "| 01 | an old row |"), encoding="utf-8")
    assert [s[0] for s in lesson_list.stale_tables(LESSONS, tmp_path)] == ["README.md"]
    assert lesson_list.write_tables(LESSONS, tmp_path) == ["README.md"]
    assert readme.read_text(encoding="utf-8") == original
    assert lesson_list.stale_tables(LESSONS, tmp_path) == []


def test_a_mistake_in_the_list_is_one_clear_error(tmp_path):
    broken = tmp_path / "lessons.toml"
    text = (ROOT / "lessons" / "lessons.toml").read_text(encoding="utf-8")
    broken.write_text(text.replace("port = 9002", 'port = "9002"'), encoding="utf-8")
    with pytest.raises(lesson_list.ListError, match=r"02_et_echo.*port should be a whole number"):
        lesson_list.load(broken)
    broken.write_text(text.replace('minutes = 35\n', ""), encoding="utf-8")
    with pytest.raises(lesson_list.ListError, match=r"01_lt_echo.*missing \['minutes'\]"):
        lesson_list.load(broken)
