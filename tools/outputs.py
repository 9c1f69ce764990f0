#!/usr/bin/env python3
"""Store fresh outputs in the lesson notebooks: `make outputs`, or `make outputs NB=03`.

    python tools/outputs.py                  # every notebooks/NN_*.ipynb, in lesson order
    python tools/outputs.py 03 05            # only the notebooks whose name starts so
    python tools/outputs.py path/to/x.ipynb  # any notebook, by its path

Each notebook runs top to bottom in a fresh kernel of this Python (the venv's, the one nbval
uses with --nbval-current-env), in the notebook's own folder, as `make test` runs it. It is
written back only when the run is one that `make test` accepts: every code cell ran once, in
order (execution counts 1..n), no error, nothing on stderr. Otherwise the file is left as it
was and the first bad cell is named.

What is written is stable, so that after a run with nothing edited `git diff` shows no change:
- no timing metadata per cell (the `execution` timestamps Jupyter records) is stored;
- the notebook's own metadata (kernel name, language version) is kept as it was;
- a cell not edited since the last commit (same source as in git's HEAD) whose new outputs
  equal the committed ones as nbval compares them (text, after notebooks/sanitize.cfg) keeps
  the committed outputs, pictures included: a plot of timings differs a little on every run.
  In a cell marked `# NBVAL_IGNORE_OUTPUT` (a measurement: times, rates) the numbers are not
  compared either. Every other cell gets its new outputs. But once a measured cell gets new
  outputs (it was edited, or what it prints changed), every cell does: the figures a
  notebook shows, and the conclusions that quote them, come from one run.
- `--fresh` (`make outputs FRESH=1`) stores every new output: use it when a change to a
  lesson script shows only in a picture or a measured number.
"""

import argparse
import copy
import re
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

try:
    import ipykernel.kernelspec
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
    from nbval.plugin import coalesce_streams
    from traitlets import default
except ImportError as e:
    sys.exit(f"error: {e.name} is missing: run `make outputs`, or .venv/bin/python {sys.argv[0]}")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
LESSON_GLOB = "[0-9][0-9]_*.ipynb"
SANITIZE = NOTEBOOKS / "sanitize.cfg"
CELL_TIMEOUT = 60  # seconds, as pytest.ini gives nbval


class ThisPython(KernelSpecManager):
    """Whatever kernel a notebook names, run it with this interpreter (the venv's)."""

    def get_kernel_spec(self, kernel_name):
        return self.kernel_spec_class(resource_dir=ipykernel.kernelspec.RESOURCES,
                                      **ipykernel.kernelspec.get_kernel_dict())


def over_unix_sockets(manager_class):
    """manager_class, its kernels talking over Unix sockets rather than TCP ports.

    A kernel is given five free TCP ports, which it binds a moment later; meanwhile any
    client's connect() on the machine may take one as its own port, and the kernel dies
    before it starts. Beside a notebook that opens ten thousand connections (lesson 07's),
    with tests running side by side, that happens. A Unix socket has no port to lose. Its
    files are named after a new id in the temporary folder and removed when the kernel
    stops. (nbval's kernels get the same in tests/conftest.py.)"""

    class OverUnixSockets(manager_class):
        @default("transport")
        def _transport_default(self):
            return "ipc"

        @default("ip")
        def _ip_default(self):  # with ipc, the start of the sockets' file names
            return str(Path(tempfile.gettempdir()) / f"kernel-{uuid.uuid4().hex}")

    return OverUnixSockets


@over_unix_sockets
class ThisPythonKernel(AsyncKernelManager):
    @default("kernel_spec_manager")
    def _kernel_spec_manager_default(self):
        return ThisPython(data_dir=self.data_dir)


class Refused(Exception):
    """The run is not one `make test` accepts; the message says which cell and why."""


def sanitize_patterns(path=SANITIZE):
    """The (regex, replacement) pairs of an nbval sanitize file."""
    pairs, regex = [], None
    if path.exists():
        for line in path.read_text().splitlines():
            if line.startswith("regex:"):
                regex = line[len("regex:"):].strip()
            elif line.startswith("replace:") and regex is not None:
                pairs.append((re.compile(regex), line[len("replace:"):].strip()))
                regex = None
    return pairs


# What nbval leaves out of its comparison (its skip_compare, without nbdime); it compares
# every other kind of output: text/plain, text/markdown, text/html, image/svg+xml, ...
NOT_COMPARED = ("image/png", "image/jpeg", "application/vnd.jupyter.widget-view+json")
NUMBER = re.compile(r"\d[\d.,]*")


def comparable(outputs, patterns, numbers=True):
    """Outputs as nbval compares them: streams and text, sanitized, pictures left out; with
    numbers=False every number (and the spaces that align it) is masked as well."""

    def clean(text):
        text = text if isinstance(text, str) else "".join(text)
        for regex, replacement in patterns:
            text = regex.sub(replacement, text)
        return text if numbers else re.sub(r" +", " ", NUMBER.sub("N", text))

    shown = []
    # nbval merges the streams of one name (a line printed late may come as a separate output)
    for out in coalesce_streams(copy.deepcopy(outputs)):
        if out.get("output_type") == "stream":
            shown.append((out["name"], clean(out["text"])))
        elif out.get("output_type") == "error":
            shown.append(("error", out.get("ename"), clean(out.get("evalue", ""))))
        else:
            shown.append(tuple(sorted((kind, clean(value)) for kind, value in out.get("data", {}).items()
                                      if kind not in NOT_COMPARED)))
    return shown


def measured(cell):
    """Marked as truly variable for nbval: a `# NBVAL_IGNORE_OUTPUT` line or the tag."""
    return ("nbval-ignore-output" in cell.metadata.get("tags", [])
            or any(line.strip() == "# NBVAL_IGNORE_OUTPUT" for line in cell.source.splitlines()))


def cell_label(index, cell):
    first = next((line for line in cell.source.splitlines() if line.strip()), "")
    return f"cell {index + 1} ({first[:60]!r})"


def check_run(nb):
    """Raise Refused unless the executed notebook is what `make test` accepts."""
    code = [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.source.strip()]
    for n, (i, cell) in enumerate(code, start=1):
        if cell.execution_count != n:
            raise Refused(f"{cell_label(i, cell)} ran as number {cell.execution_count}, not {n}")
        for out in cell.outputs:
            if out.output_type == "error":
                raise Refused(f"{cell_label(i, cell)} raised {out.ename}: {out.evalue}")
            if out.get("name") == "stderr":
                said = out.text.strip().splitlines()
                raise Refused(f"{cell_label(i, cell)} wrote to stderr: {said[-1] if said else ''}")


def committed(path):
    """The notebook as git's HEAD has it, or None (not in git, or not committed yet)."""
    try:
        shown = subprocess.run(["git", "show", f"HEAD:./{path.name}"], cwd=path.parent,
                               capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if shown.returncode != 0:
        return None
    try:
        return nbformat.reads(shown.stdout, as_version=4)
    except Exception:  # not a notebook that nbformat reads: nothing to keep from it
        return None


def execute(path):
    """Run the notebook at path in a fresh kernel; return the stored and the new notebook."""
    stored = nbformat.read(path, as_version=4)
    nb = copy.deepcopy(stored)
    client = NotebookClient(
        nb, timeout=CELL_TIMEOUT, startup_timeout=60, record_timing=False,
        kernel_manager_class=ThisPythonKernel,
        resources={"metadata": {"path": str(path.parent)}},
    )
    # The kernel's own log (a warning about its loopback TCP channels) is kept out of the
    # terminal and shown only when the kernel dies.
    log = tempfile.TemporaryFile(mode="w+")
    try:
        client.execute(stderr=log)
    except CellExecutionError as e:
        for i, cell in enumerate(nb.cells):
            for out in cell.get("outputs", []):
                if out.output_type == "error":
                    raise Refused(f"{cell_label(i, cell)} raised {out.ename}: {out.evalue}") from None
        raise Refused(f"a cell failed: {e.ename}: {e.evalue}") from None
    except CellTimeoutError:
        raise Refused(f"a cell ran longer than {CELL_TIMEOUT} s") from None
    except DeadKernelError:
        log.seek(0)
        said = log.read().strip().splitlines()
        raise Refused(f"the kernel died{': ' + said[-1] if said else ''}") from None
    finally:
        log.close()
    return stored, nb


def stabilise(stored, nb, head, patterns, fresh=False):
    """Drop what changes on every run though nothing was edited (see the module docstring)."""
    nb.metadata = stored.metadata
    before = {cell.get("id"): cell for cell in (head.cells if head else []) if cell.get("id")}
    kept = {}  # index of a cell -> the committed outputs it keeps
    for i, cell in enumerate(nb.cells):
        cell.metadata.pop("execution", None)
        old = before.get(cell.get("id"))
        if (cell.cell_type != "code" or old is None or old.cell_type != "code"
                or old.source != cell.source):
            continue
        numbers = not measured(cell)
        if comparable(old.outputs, patterns, numbers) == comparable(cell.outputs, patterns, numbers):
            kept[i] = old.outputs
    # A notebook's figures come from one run: once one measured cell takes its new outputs,
    # every cell does, pictures included, so that no table or conclusion mixes two runs.
    fresh = fresh or any(measured(cell) and i not in kept
                         for i, cell in enumerate(nb.cells) if cell.cell_type == "code")
    for i, outputs in ({} if fresh else kept).items():
        cell = nb.cells[i]
        cell.outputs = copy.deepcopy(outputs)
        for out in cell.outputs:  # a cell added above renumbers the ones below it
            if out.output_type == "execute_result":
                out.execution_count = cell.execution_count
    return nb


def store(path, patterns, fresh=False):
    """Run the notebook and write it back if the run is good; True if the file changed."""
    stored, nb = execute(path)
    check_run(nb)
    nb = stabilise(stored, nb, committed(path), patterns, fresh)
    text = nbformat.writes(nb) + "\n"
    changed = text != path.read_text(encoding="utf-8")
    if changed:
        path.write_text(text, encoding="utf-8")
    return changed


def chosen(names):
    every = sorted(NOTEBOOKS.glob(LESSON_GLOB))
    if not names:
        return every
    picked = []
    for name in names:
        as_path = Path(name)
        if as_path.suffix == ".ipynb" and as_path.exists():
            picked.append(as_path.resolve())
            continue
        matches = [nb for nb in every if nb.name.startswith(name)]
        if not matches:
            known = ", ".join(nb.name[:2] for nb in every)
            raise SystemExit(f"error: no notebook in notebooks/ starts with {name!r} (there are {known})")
        picked += matches
    return picked


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", metavar="NB",
                        help="a lesson number (03), a name's start, or a notebook path; default: all")
    parser.add_argument("--fresh", action="store_true",
                        help="store every new output, also where only pictures or measured numbers differ")
    args = parser.parse_args()
    patterns = sanitize_patterns()
    failed = 0
    for path in chosen(args.notebooks):
        shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        try:
            changed = store(path, patterns, args.fresh)
        except Refused as e:
            print(f"error: {shown}: {e}; the file is unchanged", file=sys.stderr)
            failed += 1
            continue
        print(f"{shown}: {'new outputs stored' if changed else 'unchanged'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
