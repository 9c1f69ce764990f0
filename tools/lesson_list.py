#!/usr/bin/env python3
"""The list of lessons, lessons/lessons.toml, and the tables made from it: `make tables`.

    python tools/lesson_list.py           # rewrite the lesson tables in README.md and
                                          # notebooks/INSTRUCTOR.md from the list
    python tools/lesson_list.py --check   # only say which table is out of date (status 1)

A table is the block of `|` lines that follows its heading ("## Lessons" in README.md,
"## The lessons" in notebooks/INSTRUCTOR.md); only those lines are rewritten, the rest of
each file is left as it is. tests/test_lesson_list.py checks the list against the files.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, fields
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, pinned in requirements.txt
    try:
        import tomli as tomllib
    except ModuleNotFoundError:
        sys.exit(f"error: tomli is missing: run `make tables`, or .venv/bin/python {sys.argv[0]}")

ROOT = Path(__file__).resolve().parent.parent
LIST = ROOT / "lessons" / "lessons.toml"
SERVERS = ("echo", "http", "udp")  # a TCP echo server, an HTTP server, a UDP echo server
KINDS = SERVERS + ("demo",)  # demo: a script of demonstrations (sub-commands), not a server


@dataclass(frozen=True)
class Lesson:
    name: str  # 01_lt_echo: lessons/01_lt_echo.py and notebooks/01_lt_echo.ipynb
    title: str
    port: int
    kind: str  # one of KINDS
    exercise: str  # 01_connection_limit: in exercises/, solutions/, exercises/checks/
    shows: str
    minutes: int
    live: str

    @property
    def number(self) -> str:
        return self.name[:2]

    @property
    def files(self) -> list[str]:
        """Every file the lesson needs, relative to the workbook's folder."""
        return [f"lessons/{self.name}.py", f"notebooks/{self.name}.ipynb",
                f"exercises/{self.exercise}.py", f"solutions/{self.exercise}.py",
                f"exercises/checks/{self.exercise}.py"]


class ListError(Exception):
    """lessons.toml is not what this module expects; the message says where."""


def load(path: Path = LIST) -> list[Lesson]:
    """The lessons, in the order of the file."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ListError(f"{path.name}: {e}") from None
    expected = {f.name: f.type for f in fields(Lesson)}
    lessons = []
    for i, entry in enumerate(data.get("lesson", []), start=1):
        where = f"{path.name}, lesson entry {i} ({entry.get('name', 'no name')})"
        missing = sorted(set(expected) - set(entry))
        unknown = sorted(set(entry) - set(expected))
        if missing or unknown:
            raise ListError(f"{where}: missing {missing}, unknown {unknown}")
        for key, kind in expected.items():
            if type(entry[key]).__name__ != kind:
                wanted = {"str": "a quoted string", "int": "a whole number"}[kind]
                raise ListError(f"{where}: {key} should be {wanted}, not {entry[key]!r}")
        if entry["kind"] not in KINDS:
            raise ListError(f"{where}: kind should be one of {', '.join(KINDS)}, not {entry['kind']!r}")
        lessons.append(Lesson(**entry))
    if not lessons:
        raise ListError(f"{path.name} lists no [[lesson]]")
    return lessons


def scripts(*kinds: str, lessons: list[Lesson] | None = None) -> list[str]:
    """The lesson scripts' file names ("01_lt_echo.py"), in order; only those of the given
    kinds when any are given: scripts("echo", "http") is every lesson that speaks TCP."""
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"no lesson kind {sorted(unknown)}; the kinds are {KINDS}")
    return [f"{ls.name}.py" for ls in (lessons or load()) if not kinds or ls.kind in kinds]


def servers(lessons: list[Lesson] | None = None) -> list[str]:
    """The scripts that are servers, of every kind but "demo": each keeps the server
    contract (CONTRIBUTING.md) when run with no flags."""
    return scripts(*SERVERS, lessons=lessons)


def readme_table(lessons: list[Lesson]) -> list[str]:
    rows = ["| # | lesson | what it shows | port | files |", "|---|---|---|---|---|"]
    for ls in lessons:
        files = (f"[script](lessons/{ls.name}.py), [notebook](notebooks/{ls.name}.ipynb), "
                 f"[exercise](exercises/{ls.exercise}.py)")
        rows.append(f"| {ls.number} | {ls.title} | {ls.shows} | {ls.port} | {files} |")
    return rows


def instructor_table(lessons: list[Lesson]) -> list[str]:
    rows = ["| lesson | deck | port | time | live in two terminals |",
            "| --- | --- | --- | --- | --- |"]
    for ls in lessons:
        rows.append(f"| {ls.number} {ls.title} | `{ls.name}` | {ls.port} | {ls.minutes} min | {ls.live} |")
    rows.append(f"| in all | | | {sum(ls.minutes for ls in lessons)} min | |")
    return rows


# (file, the heading the table follows, how the table is made)
TABLES = [
    ("README.md", "## Lessons", readme_table),
    ("notebooks/INSTRUCTOR.md", "## The lessons", instructor_table),
]


def find_table(lines: list[str], heading: str, where: str) -> tuple[int, int]:
    """The [start, end) line numbers of the first table after the heading line."""
    try:
        start = lines.index(heading)
    except ValueError:
        raise ListError(f"{where}: no line {heading!r}, which the lesson table follows") from None
    while start < len(lines) and not lines[start].startswith("|"):
        start += 1
        if start < len(lines) and lines[start].startswith("#"):
            raise ListError(f"{where}: no table under {heading!r}")
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    if start == end:
        raise ListError(f"{where}: no table under {heading!r}")
    return start, end


def stale_tables(lessons: list[Lesson], root: Path = ROOT) -> list[tuple[str, list[str], list[str]]]:
    """(file, the table as made from the list, the table as found) for each table that differs."""
    stale = []
    for name, heading, make in TABLES:
        lines = (root / name).read_text(encoding="utf-8").splitlines()
        start, end = find_table(lines, heading, name)
        wanted = make(lessons)
        if lines[start:end] != wanted:
            stale.append((name, wanted, lines[start:end]))
    return stale


def write_tables(lessons: list[Lesson], root: Path = ROOT) -> list[str]:
    """Rewrite each out-of-date table in place; return the names of the files changed."""
    changed = []
    for name, wanted, _ in stale_tables(lessons, root):
        path = root / name
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        heading = next(h for n, h, _ in TABLES if n == name)
        start, end = find_table(lines, heading, name)
        lines[start:end] = wanted
        path.write_text("\n".join(lines) + ("\n" if text.endswith("\n") else ""), encoding="utf-8")
        changed.append(name)
    return changed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit with status 1 if a table is out of date")
    args = parser.parse_args()
    try:
        lessons = load()
        if args.check:
            stale = stale_tables(lessons)
            for name, _, _ in stale:
                print(f"{name}: the lesson table is out of date (make tables)", file=sys.stderr)
            return 1 if stale else 0
        changed = write_tables(lessons)
    except ListError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name in changed:
        print(f"{name}: lesson table rewritten from lessons/lessons.toml")
    if not changed:
        print("both lesson tables already match lessons/lessons.toml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
