# The commands people type. Each one first makes sure .venv matches requirements.txt:
# it is built when missing and rebuilt when the pins change; otherwise nothing is installed.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
READY  := $(VENV)/.pins-installed

.PHONY: lab test check bench slides html outputs tables wheelhouse help
help:
	@echo "make lab    open JupyterLab on the workbook, at notebooks/ (prints the URL)"
	@echo "make test   run every test and every notebook (nbval, strict)"
	@echo "make check  which exercises pass, and a hint for the first that does not (make check 04: exercise 04 alone)"
	@echo "make bench  benchmarks: echo (lessons 01, 02, asyncio, uvloop), HTTP (lesson 04, uvicorn, ...), lesson 11's goals (uvloop, nginx), workers (lesson 08), loop layers (lesson 10)"
	@echo "make slides every lesson as a reveal.js deck, in $(EXPORT_DIR)/slides (works offline)"
	@echo "make html   every lesson as a static page with an index, in $(EXPORT_DIR)/html"
	@echo "For contributors (see CONTRIBUTING.md):"
	@echo "make outputs  run every notebook top to bottom, store its outputs (NB=03: only notebook 03)"
	@echo "make tables   write the lesson tables of README.md and INSTRUCTOR.md from lessons/lessons.toml"
	@echo "make wheelhouse  download every pinned package into wheelhouse/; later set-ups here install from it, offline"

# A folder of wheels (`make wheelhouse`) carried into a room with slow Wi-Fi: when it holds
# any, .venv is installed from it alone, with no package index.
WHEELHOUSE ?= wheelhouse
FROM_WHEELHOUSE := $(if $(wildcard $(WHEELHOUSE)/*.whl),--no-index --find-links $(WHEELHOUSE))

$(READY): requirements.txt
	@# Linux first: on macOS or Windows no Python version would help.
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.platform == "linux" else "error: epoll exists only on Linux; use a Linux machine, a VM, WSL2 or a container (see README.md, Troubleshooting)")'
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "error: the workbook needs Python 3.10 or newer; $(PYTHON) is " + sys.version.split()[0] + " (try: make test PYTHON=python3.12)")'
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV) || { echo "error: could not create $(VENV); on Debian or Ubuntu: sudo apt-get install python3-venv" >&2; exit 2; }
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(FROM_WHEELHOUSE) -r requirements.txt \
	  || { echo "error: could not install requirements.txt into $(VENV) (pip says why above)$(if $(FROM_WHEELHOUSE), from $(WHEELHOUSE)/: was it made on this kind of machine? see make wheelhouse)" >&2; exit 2; }
	@# matplotlib builds its font cache on first import and says so on stderr; do it now,
	@# not inside the first notebook cell that draws (nbval would see the extra output).
	$(BIN)/python -c "import matplotlib.pyplot"
	touch $@

# Jupyter refuses to run as root (as in many containers) unless told it may.
ROOT_OK := $(if $(filter 0,$(shell id -u)),--allow-root)

# The lab's root is the workbook, so that exercises/, solutions/ and lessons/ open beside the
# notebooks; it opens on notebooks/. A kernel still starts in its notebook's own folder, where
# `import harness` finds the harness.
lab: $(READY)
	$(BIN)/jupyter lab --no-browser --ServerApp.root_dir=. --LabApp.default_url=/lab/tree/notebooks $(ROOT_OK) $(LAB_ARGS)

test: $(READY)
	$(BIN)/python -m pytest

# `make check 04` (or `make check 02 04`) checks those exercises alone: the numbers after
# check are its arguments, so make is told they are targets with nothing to do.
CHECK_ONLY := $(if $(filter check,$(firstword $(MAKECMDGOALS))),$(wordlist 2,$(words $(MAKECMDGOALS)),$(MAKECMDGOALS)))
ifneq ($(CHECK_ONLY),)
$(CHECK_ONLY):
	@:
endif

check: $(READY)
	$(BIN)/python exercises/check.py $(CHECK_ONLY)

# After editing a lesson or its notebook: store the outputs that `make test` will compare.
# NB="03 05" picks notebooks by number; see tools/outputs.py for what is kept as it was.
outputs: $(READY)
	$(BIN)/python tools/outputs.py $(NB) $(if $(FRESH),--fresh)

tables: $(READY)
	$(BIN)/python tools/lesson_list.py

BENCH := $(VENV)/bench/.pins-installed
$(BENCH): tools/bench/requirements.txt $(READY)
	rm -rf $(VENV)/bench
	$(PYTHON) -m venv $(VENV)/bench || { echo "error: could not create $(VENV)/bench; on Debian or Ubuntu: sudo apt-get install python3-venv" >&2; exit 2; }
	$(VENV)/bench/bin/python -m pip install --quiet --disable-pip-version-check -r tools/bench/requirements.txt || { echo "error: could not install tools/bench/requirements.txt into $(VENV)/bench (pip says why above)" >&2; exit 2; }
	touch $@

bench: $(BENCH)
	$(VENV)/bench/bin/python tools/bench/echo_bench.py
	$(VENV)/bench/bin/python tools/bench/http_bench.py
	$(VENV)/bench/bin/python tools/bench/goals_bench.py
	$(VENV)/bench/bin/python tools/bench/workers_bench.py
	$(VENV)/bench/bin/python tools/bench/loop_bench.py

# Slides and the static edition, from the committed notebooks (never re-executed); see
# tools/export/build.py. EXPORT_DIR=somewhere puts them elsewhere.
EXPORT_DIR ?= build

slides: $(READY)
	$(BIN)/python tools/export/build.py slides $(EXPORT_DIR)/slides

html: $(READY)
	$(BIN)/python tools/export/build.py html $(EXPORT_DIR)/html

# Every pinned package as a wheel, for this machine's Python and processor. Copy the workbook
# with its wheelhouse/ to each student (a USB stick): `make lab` and `make test` then install
# from it with no network. Students on another processor (arm64 against x86_64) or another
# Python need a wheelhouse made on such a machine.
wheelhouse:
	$(PYTHON) -m pip download --quiet --disable-pip-version-check --only-binary=:all: -r requirements.txt -d $(WHEELHOUSE)
	@echo "$(WHEELHOUSE)/ holds $$(ls $(WHEELHOUSE)/*.whl | wc -l) wheels for $$($(PYTHON) -c 'import platform, sys; print("Python", sys.version.split()[0], "on", platform.machine())')"
