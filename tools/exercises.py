#!/usr/bin/env python3
"""Each exercise has one source: its solution. The starting point is derived from it.

In solutions/NN_name.py, the place where the exercise differs is one block (or several):

        # exercise: the starting point has the "#|" lines, not the answer below
        #| # TODO: what to change, and why
        #| the start's own code, if it has any  # TODO
        # answer:
        the finished code
        # end of the answer

The starting point, exercises/NN_name.py, is the same file with each block replaced by its
"#|" lines (less the "#| "), every other line untouched. Learners edit exercises/; the tests
derive the pristine start from solutions/ and never read exercises/, so a learner's work,
finished or half done, cannot change what `make test` says.

    python tools/exercises.py            # are the starts in exercises/ derived from solutions/?
    python tools/exercises.py --write    # write them (after changing a solution)
    python tools/exercises.py --write 03 # write one again: a learner's way to start over
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = ROOT / "solutions"
EXERCISES = ROOT / "exercises"

BEGIN = re.compile(r'^(?P<indent>[ \t]*)# exercise: the starting point has the "#\|" lines, '
                   r'not the answer below$')
START_LINE = re.compile(r"^(?P<indent>[ \t]*)#\|(?: (?P<text>.*))?$")
ANSWER = re.compile(r"^[ \t]*# answer:$")
END = re.compile(r"^[ \t]*# end of the answer$")


class MarkerError(ValueError):
    """A solution whose exercise blocks are not well formed; the message names the line."""


def split(source: str, name: str = "solution") -> tuple[str, str, list]:
    """(the starting point, the solution without markers and "#|" lines, the blocks).

    The second is the finished code exactly as it runs; comparing it with the first shows
    what a learner has to change. Each block is (its line number, its start lines, its
    answer lines).
    """
    start, answer, blocks = [], [], []
    state, indent, opened = "text", "", 0
    for number, line in enumerate(source.splitlines(keepends=True), 1):
        bare = line.rstrip("\n")
        where = f"{name}:{number}"
        if state == "text":
            found = BEGIN.match(bare)
            if found:
                state, indent, opened = "start", found["indent"], number
                blocks.append((number, [], []))
            elif START_LINE.match(bare) or ANSWER.match(bare) or END.match(bare):
                raise MarkerError(f"{where}: {bare.strip()!r} outside an exercise block")
            else:
                start.append(line)
                answer.append(line)
        elif state == "start":
            found = START_LINE.match(bare)
            if found and found["indent"] == indent:
                text = found["text"] or ""
                start.append(indent + text + "\n" if text else "\n")
                blocks[-1][1].append(start[-1])
            elif ANSWER.match(bare):
                state = "answer"
            else:
                raise MarkerError(f"{where}: inside an exercise block, every line before "
                                  f"'# answer:' starts with {indent!r} + '#|'")
        else:  # the answer
            if END.match(bare):
                state = "text"
            elif BEGIN.match(bare) or START_LINE.match(bare) or ANSWER.match(bare):
                raise MarkerError(f"{where}: a marker inside the answer of the block "
                                  f"opened at line {opened}")
            else:
                answer.append(line)
                blocks[-1][2].append(line)
    if state != "text":
        raise MarkerError(f"{name}:{opened}: the exercise block has no '# end of the answer'")
    return "".join(start), "".join(answer), blocks


def solution_names() -> list[str]:
    return sorted(path.name for path in SOLUTIONS.glob("[0-9][0-9]_*.py"))


def pristine_start(name: str) -> str:
    """The starting point of exercise `name`, derived from its solution (never from exercises/)."""
    start, _, blocks = split((SOLUTIONS / name).read_text(), f"solutions/{name}")
    if not blocks:
        raise MarkerError(f"solutions/{name} has no exercise block, so no starting point")
    return start


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Derive the exercises' starting points from solutions/ (one source each).")
    parser.add_argument("names", nargs="*", help="only exercises whose name starts so")
    parser.add_argument("--write", action="store_true",
                        help="write exercises/NAME (any work in it is replaced)")
    args = parser.parse_args()
    names = [name for name in solution_names()
             if not args.names or any(name.startswith(n) for n in args.names)]
    if not names:
        print(f"error: no solution matches {' '.join(args.names)}", file=sys.stderr)
        return 2
    stale = []
    for name in names:
        try:
            start = pristine_start(name)
        except MarkerError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        target = EXERCISES / name
        if args.write:
            target.write_text(start)
            print(f"wrote exercises/{name}")
        elif not target.exists() or target.read_text() != start:
            stale.append(name)
            print(f"exercises/{name} is not the start that solutions/{name} gives")
        else:
            print(f"exercises/{name} is up to date")
    if stale:
        print(f"\n`python tools/exercises.py --write {' '.join(n[:2] for n in stale)}` writes "
              "them again (replacing whatever is in them).")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
