#!/usr/bin/env python3
"""Check the exercises: `make check` (or `.venv/bin/python exercises/check.py [NAME ...]`).

Each exercise is a lesson server in exercises/ with lines marked TODO for you to change;
its finished version is in solutions/ under the same name (look only when stuck). The check
for each one lives in exercises/checks/ and drives your server with real clients: first
the clients of the exercise, then the lesson's rude ones (a reset mid-send, a client that
never reads, a half-close, garbage bytes), which no server may let crash it, lose data,
grow without bound, or stop serving the others.

    make check                      # every exercise, in order
    make check 04                   # exercise 04 alone (4 means 04 too)
    .venv/bin/python exercises/check.py 04    # the same: the ones whose name starts with 04
    .venv/bin/python exercises/check.py --solutions   # the same checks against solutions/
    python tools/exercises.py --write 03    # start exercise 03 over (your changes are lost)
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "notebooks"))  # the harness lives beside the notebooks
sys.path.insert(0, str(HERE / "checks"))  # the hostile clients every check shares

import harness  # noqa: E402


@dataclass
class Exercise:
    name: str  # the file name, the same in exercises/ and solutions/
    title: str
    hint: str
    check: object  # check(script_path) -> str: what passed; raises AssertionError if not
    hostile: object  # hostile(script_path) -> str: the lesson's rude clients; or BrokenBy

    def run(self, folder: Path) -> tuple[bool, str]:
        """(passed, what happened in a few lines). Never raises for a mistake in the file."""
        script = folder / self.name
        problem = unreadable(script)
        if problem:
            return False, problem
        first = len(harness.started)
        try:
            passed = self.check(script)
            return True, f"{passed}\n{self.hostile(script)}"
        except harness.ServerFailed as e:
            return False, did_not_start(str(e))
        except (AssertionError, harness.Stalled, OSError) as e:
            return False, (str(e).strip() or type(e).__name__) + crash_report(first)
        except Exception as e:  # an answer the check could not even parse
            return False, (f"the check could not make sense of your server's answer "
                           f"({type(e).__name__}: {e})" + crash_report(first))
        finally:
            harness.stop_all()


def unreadable(script: Path) -> str | None:
    """One line if Python cannot even read the file (missing, or a syntax error)."""
    shown = display(script)
    if not script.is_file():
        return (f"{shown} is missing; `python tools/exercises.py --write {script.name[:2]}` "
                "writes its starting point again")
    try:
        compile(script.read_bytes(), str(script), "exec")
    except SyntaxError as e:  # IndentationError and TabError too
        return f"{shown}, line {e.lineno}: {e.msg} (Python cannot run the file: {type(e).__name__})"
    except ValueError as e:  # NUL bytes in the source, on older Pythons
        return f"{shown}: {e} (Python cannot run the file)"
    return None


def display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def did_not_start(message: str) -> str:
    """A server that never listened, in one line: its exception if it printed one."""
    lines = [line for line in message.splitlines() if line.strip()]
    if any(line.startswith("Traceback") for line in lines):
        where = next((line.strip() for line in reversed(lines)
                      if line.strip().startswith('File "')), "")
        _, _, rest = where.partition(", line ")
        number, _, function = rest.partition(", in ")
        at = f" (line {number}, in {function})" if number else ""
        return f"your server stopped before it listened: {lines[-1].strip()}{at}"
    return lines[0] if lines else "your server did not start"


def crash_report(first: int) -> str:
    """What the servers started since `first` wrote to stderr: a traceback is the best hint."""
    report = ""
    for server in harness.started[first:]:
        lines = server.stderr.splitlines()
        if any(line.startswith("Traceback") for line in lines):
            shown = "\n".join(lines[-8:])
            report += f"\nYour server crashed; the end of what it printed:\n{shown}"
    return report


def load_exercises() -> list[Exercise]:
    """Every exercises/checks/NN_*.py module, in name order; each defines one exercise."""
    found = []
    for path in sorted((HERE / "checks").glob("[0-9]*.py")):
        spec = importlib.util.spec_from_file_location(f"checks.{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        found.append(Exercise(module.EXERCISE, module.TITLE, module.HINT, module.check,
                              module.HOSTILE))
    return found


def two_digits(name: str) -> str:
    """4 is exercise 04: the files are numbered with two digits."""
    return f"0{name}" if len(name) == 1 and name.isdigit() else name


def main() -> int:
    parser = argparse.ArgumentParser(description="Check the workbook's exercises.")
    parser.add_argument("names", nargs="*", help="only exercises whose name starts so")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--solutions", action="store_true",
                       help="check the finished versions in solutions/ instead")
    where.add_argument("--dir", type=Path, metavar="DIR",
                       help="check the files of the same names in DIR instead")
    args = parser.parse_args()
    folder = ROOT / "solutions" if args.solutions else args.dir or HERE
    exercises = load_exercises()
    names = [two_digits(name) for name in args.names]
    unknown = [given for given, name in zip(args.names, names)
               if not any(ex.name.startswith(name) for ex in exercises)]
    if unknown:
        print(f"no exercise matches {' '.join(unknown)}; the exercises are "
              f"{', '.join(ex.name.removesuffix('.py') for ex in exercises)} "
              f"(give a number, such as 04, or the start of a name)", file=sys.stderr)
        return 2
    chosen = [ex for ex in exercises if not names or any(ex.name.startswith(n) for n in names)]
    failed = []
    try:
        for ex in chosen:
            ok, detail = ex.run(folder)
            print(f"{'pass' if ok else 'FAIL'}  {ex.name:<28} {ex.title}")
            print(f"      {detail}".replace("\n", "\n      "), flush=True)
            if not ok:
                failed.append(ex)
    except KeyboardInterrupt:
        harness.stop_all()
        print("\ninterrupted; every server the check started is stopped", file=sys.stderr)
        return 130
    if not failed:
        print(f"\nAll {len(chosen)} exercise{'s' if len(chosen) > 1 else ''} pass.")
        return 0
    first_failure = failed[0]
    print(f"\n{len(chosen) - len(failed)} of {len(chosen)} exercises pass. "
          f"Next: {display(folder / first_failure.name)}, the lines marked TODO.")
    print(f"Hint: {first_failure.hint}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
