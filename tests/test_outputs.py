"""`make outputs` (tools/outputs.py) stores what nbval in strict mode expects, and a second run
with nothing edited changes nothing. Each test runs a small notebook made here, in a git
repository of its own under tmp_path, never the lesson notebooks."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "tools" / "outputs.py"
GIT = ["git", "-c", "user.name=workbook", "-c", "user.email=workbook@localhost", "-c", "commit.gpgsign=false"]

METADATA = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python", "version": "3.0.0"}}
CELLS = [
    new_markdown_cell("# A small lesson", metadata={"slideshow": {"slide_type": "slide"}}),
    # Stale: run as number 7, with the timestamps Jupyter records.
    new_code_cell("import random\nprint('hello from the kernel')", execution_count=7,
                  metadata={"tags": ["demo"], "execution": {"iopub.status.busy": "2020-01-01T00:00:00Z"}}),
    new_code_cell("# NBVAL_IGNORE_OUTPUT\n# (a measurement: different on every run)\n"
                  "print(f'took {random.random():.6f} s')"),
    new_code_cell("print(f'listening on 127.0.0.1:{random.randrange(1024, 65536)}')  # sanitized"),
    new_code_cell("6 * 7"),
    new_code_cell("import base64, os\n"  # a picture that differs on every run, as a plot of timings does
                  "display({'image/png': base64.b64encode(os.urandom(32)).decode(), 'text/plain': '<a picture>'}, raw=True)"),
]


_spec = importlib.util.spec_from_file_location("outputs_tool", TOOL)
tool = sys.modules["outputs_tool"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tool)


def run(path, *args, capfd):
    """`python tools/outputs.py path args`, in this process (a kernel start is cost enough)."""
    capfd.readouterr()
    argv = sys.argv
    sys.argv = ["tools/outputs.py", str(path), *args]
    try:
        status = tool.main()
    finally:
        sys.argv = argv
    return status, capfd.readouterr()


def git(folder, *args):
    subprocess.run([*GIT, *args], cwd=folder, check=True, capture_output=True, timeout=30)


def make(folder, cells):
    path = folder / "lesson.ipynb"
    nbformat.write(new_notebook(cells=cells, metadata=METADATA), path)
    git(folder, "init", "-q")
    git(folder, "add", path.name)
    git(folder, "commit", "-q", "-m", "a small lesson")
    return path


def outputs(cell, counts=True):
    shown = [{k: v for k, v in out.items() if counts or k != "execution_count"} for out in cell["outputs"]]
    return json.dumps(shown, sort_keys=True)


def test_stores_a_clean_run_and_then_only_what_was_edited_changes(tmp_path, capfd):
    path = make(tmp_path, CELLS)
    status, said = run(path, capfd=capfd)
    assert status == 0, said.err
    assert said.err == "", "the kernel's own log stays out of the terminal"
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert [c["execution_count"] for c in code] == [1, 2, 3, 4, 5]
    assert [(o["name"], "".join(o["text"])) for o in code[0]["outputs"]] == [("stdout", "hello from the kernel\n")]
    assert code[3]["outputs"][0]["data"] == {"text/plain": ["42"]}
    assert not any("execution" in c["metadata"] for c in nb["cells"]), "timestamps were stored"
    assert code[0]["metadata"] == {"tags": ["demo"]}
    assert nb["cells"][0]["metadata"] == {"slideshow": {"slide_type": "slide"}}
    assert nb["metadata"] == METADATA, "the notebook's own metadata was changed"

    # Committed, then run again with nothing edited: not a byte changes, though the port, the
    # measurement and the picture all came out different. One stored line comes as a stream
    # output of its own, as a line printed late may: nbval merges them, and so does the tool.
    nb = nbformat.read(path, as_version=4)
    nb.cells[1].outputs.insert(0, nbformat.v4.new_output("stream", name="stdout", text=""))
    nbformat.write(nb, path)
    git(tmp_path, "commit", "-q", "-am", "outputs")
    first = path.read_bytes()
    status, said = run(path, capfd=capfd)
    assert status == 0 and "unchanged" in said.out, said
    assert path.read_bytes() == first

    # A cell added at the top, and the picture's cell edited: the edited cell gets its new
    # picture; the others keep their outputs, renumbered.
    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(1, new_code_cell("added = True"))
    nb.cells[6].source = "# a picture, edited\n" + nb.cells[6].source
    nbformat.write(nb, path)
    assert run(path, capfd=capfd)[0] == 0
    before, after = json.loads(first)["cells"], json.loads(path.read_text())["cells"]
    assert [c["execution_count"] for c in after if c["cell_type"] == "code"] == [1, 2, 3, 4, 5, 6]
    assert after[5]["outputs"][0]["execution_count"] == 5
    assert outputs(after[6]) != outputs(before[5]), "the edited cell kept its old picture"
    assert [outputs(c, counts=False) for c in after[2:6]] == [outputs(c, counts=False) for c in before[1:5]]

    # --fresh: the measurement gets its new numbers too.
    assert run(path, "--fresh", capfd=capfd)[0] == 0
    fresh = json.loads(path.read_text())["cells"]
    assert outputs(fresh[3]) != outputs(after[3]), "--fresh kept the old measurement"
    assert ["".join(o["text"]) for o in fresh[2]["outputs"]] == ["hello from the kernel\n"]


def test_what_it_stores_passes_strict_nbval(tmp_path, capfd):
    # A test of its own, so that it runs beside the one above: a second pytest takes seconds
    # to start. One worker is enough for one notebook (-n 0).
    path = make(tmp_path, CELLS)
    assert run(path, capfd=capfd)[0] == 0
    checked = subprocess.run([sys.executable, "-m", "pytest", "-c", "pytest.ini", str(path), "-q", "-n", "0"],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0 and "5 passed" in checked.stdout, checked.stdout[-2000:]


def test_a_changed_output_of_any_kind_nbval_compares_is_stored(tmp_path, capfd):
    # nbval compares every kind of output but pictures: a table shown as text/markdown whose
    # rows changed (because a cell above it changed what it measured) is a change, even
    # where its text/plain is the same.
    cell = new_code_cell("display({'text/markdown': '| new |', 'text/plain': '<table>'}, raw=True)")
    cell.outputs = [nbformat.v4.new_output("display_data", data={"text/markdown": "| old |",
                                                                  "text/plain": "<table>"})]
    cell.execution_count = 1
    path = make(tmp_path, [cell])
    status, said = run(path, capfd=capfd)
    assert status == 0, said.err
    stored = json.loads(path.read_text())["cells"][0]["outputs"][0]["data"]
    assert stored["text/markdown"] in ("| new |", ["| new |"]), stored


def test_once_a_measured_cell_is_new_every_figure_comes_from_the_new_run(tmp_path, capfd):
    # The measurement is edited, so it gets new numbers: the picture (a plot of them, say)
    # must not keep the committed run's, nor may any other figure a conclusion could quote.
    path = make(tmp_path, CELLS)
    assert run(path, capfd=capfd)[0] == 0
    git(tmp_path, "commit", "-q", "-am", "outputs")
    first = json.loads(path.read_text())["cells"]
    nb = nbformat.read(path, as_version=4)
    nb.cells[2].source += "  # edited"
    nbformat.write(nb, path)
    assert run(path, capfd=capfd)[0] == 0
    after = json.loads(path.read_text())["cells"]
    assert outputs(after[2]) != outputs(first[2])
    assert outputs(after[5]) != outputs(first[5]), "the picture kept the committed run's"
    assert outputs(after[1]) == outputs(first[1])  # what does not vary is the same anyway


def test_kernels_talk_over_unix_sockets_not_tcp_ports(tmp_path, capfd):
    # Both the tool's kernels and nbval's: no port that a client's connect() could take first.
    path = make(tmp_path, [new_code_cell(
        "from ipykernel.connect import get_connection_info\n"
        "print(get_connection_info(unpack=True)['transport'])")])
    assert run(path, capfd=capfd)[0] == 0
    assert json.loads(path.read_text())["cells"][0]["outputs"][0]["text"] == ["ipc\n"]
    import nbval.kernel
    km, kc = nbval.kernel.start_new_kernel(kernel_name=nbval.kernel.CURRENT_ENV_KERNEL_NAME)
    try:
        assert km.transport == "ipc" and Path(f"{km.ip}-{km.shell_port}").is_socket()
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    assert not list(Path(km.ip).parent.glob(Path(km.ip).name + "-*")), "socket files left"


@pytest.mark.parametrize("source, said", [
    ("import sys\nprint('careful', file=sys.stderr)", "cell 3 ('import sys') wrote to stderr: careful"),
    ("1 / 0", "cell 3 ('1 / 0') raised ZeroDivisionError: division by zero"),
], ids=["stderr", "error"])
def test_a_run_that_make_test_would_fail_leaves_the_file_alone(tmp_path, source, said, capfd):
    path = make(tmp_path, [*CELLS[:2], new_code_cell(source), CELLS[4]])
    before = path.read_bytes()
    status, printed = run(path, capfd=capfd)
    assert status == 1
    assert said in printed.err and "the file is unchanged" in printed.err, printed.err
    assert printed.err.count("\n") == 1 and "Traceback" not in printed.err, printed.err
    assert path.read_bytes() == before


def test_make_outputs_passes_the_notebooks_and_the_flag_on():
    shown = subprocess.run(["make", "-n", "outputs", "NB=03 05", "FRESH=1"], cwd=ROOT,
                           capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0, shown.stderr
    assert "tools/outputs.py 03 05 --fresh" in shown.stdout


def test_an_unknown_lesson_number_is_one_clear_line():
    with pytest.raises(SystemExit, match="no notebook in notebooks/ starts with '99'"):
        tool.chosen(["99"])


@pytest.mark.parametrize("notebook", sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")),
                         ids=lambda p: p.name)
def test_the_committed_notebooks_store_no_run_timestamps(notebook):
    """What `make outputs` writes; a run stored another way adds a timestamp to every cell,
    and every later run would show as a change."""
    stamped = [i + 1 for i, cell in enumerate(json.loads(notebook.read_text())["cells"])
               if "execution" in cell["metadata"]]
    assert not stamped, (f"cells {stamped} carry run timestamps: store the run with "
                         f"`make outputs NB={notebook.name[:2]}`")
