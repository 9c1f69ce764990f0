#!/usr/bin/env python3
"""Check the exercises: `make check` (or `python exercises/check.py [NAME ...]`).

Each exercise is a lesson server in exercises/ with lines marked TODO for you to change;
its finished version is in solutions/ under the same name (look only when stuck). The check
for each one lives in exercises/checks/ and drives your server with real clients.

    make check                      # every exercise, in order
    python exercises/check.py 01    # only the ones whose name starts with 01
    python exercises/check.py --solutions   # the same checks against solutions/
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

import harness  # noqa: E402


@dataclass
class Exercise:
    name: str  # the file name, the same in exercises/ and solutions/
    title: str
    hint: str
    check: object  # check(script_path) -> str: what passed; raises AssertionError if not

    def run(self, folder: Path) -> tuple[bool, str]:
        script = folder / self.name
        if not script.exists():
            return False, f"{script} is missing"
        first = len(harness.started)
        try:
            return True, self.check(script)
        except (AssertionError, harness.ServerFailed, harness.Stalled, OSError) as e:
            return False, (str(e).strip() or type(e).__name__) + crash_report(first)
        finally:
            harness.stop_all()


def crash_report(first: int) -> str:
    """What the servers started since `first` wrote to stderr: a traceback is the best hint."""
    report = ""
    for server in harness.started[first:]:
        lines = server.stderr.splitlines()
        if any(line.startswith("Traceback") for line in lines):
            shown = "\n".join(lines[-12:])
            report += f"\nYour server crashed; the end of what it printed:\n{shown}"
    return report


def load_exercises() -> list[Exercise]:
    """Every exercises/checks/*.py module, in name order; each defines one exercise."""
    found = []
    for path in sorted((HERE / "checks").glob("[0-9]*.py")):
        spec = importlib.util.spec_from_file_location(f"checks.{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        found.append(Exercise(module.EXERCISE, module.TITLE, module.HINT, module.check))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description="Check the workbook's exercises.")
    parser.add_argument("names", nargs="*", help="only exercises whose name starts so")
    parser.add_argument("--solutions", action="store_true",
                        help="check the finished versions in solutions/ instead")
    args = parser.parse_args()
    folder = ROOT / ("solutions" if args.solutions else "exercises")
    chosen = [ex for ex in load_exercises()
              if not args.names or any(ex.name.startswith(n) for n in args.names)]
    if not chosen:
        print(f"no exercise matches {' '.join(args.names)}", file=sys.stderr)
        return 2
    failed = []
    for ex in chosen:
        ok, detail = ex.run(folder)
        print(f"{'pass' if ok else 'FAIL'}  {ex.name:<28} {ex.title}")
        print(f"      {detail}".replace("\n", "\n      "))
        if not ok:
            failed.append(ex)
    if not failed:
        print(f"\nAll {len(chosen)} exercise{'s' if len(chosen) > 1 else ''} pass.")
        return 0
    first_failure = failed[0]
    print(f"\n{len(chosen) - len(failed)} of {len(chosen)} exercises pass. "
          f"Next: {folder.name}/{first_failure.name}, the lines marked TODO.")
    print(f"Hint: {first_failure.hint}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
