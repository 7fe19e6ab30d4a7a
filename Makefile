# Each target creates .venv at the repository root when it is missing and
# installs the package (editable) with what that target needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The loop toolkits, one extra each; installed one by one so that a machine
# without one (e.g. PyGObject's build needs libgirepository1.0-dev) still
# runs the rest.  The tests skip a missing loop with its reason, or fail
# under QIOTASK_REQUIRE_ALL_LOOPS=1 (CI, where .ci/run installs them all).
LOOP_EXTRAS := uvloop glib qt trio dask
# The PyGObject this machine's GLib can build (see .ci/pygobject).
PYGOBJECT := $(shell sh .ci/pygobject)

.PHONY: demo test lint bench bench-net info clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[test,lint,demo]'
	@for extra in $(LOOP_EXTRAS); do \
		$(PY) -m pip install -q -e ".[$$extra]" $$( [ $$extra = glib ] && echo '$(PYGOBJECT)' ) >/dev/null 2>&1 \
			|| echo "note: the '$$extra' extra could not be installed here; its tests will be skipped"; \
	done
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m qiotask demo

info: $(STAMP)
	$(PY) -m qiotask info

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples
	$(VENV)/bin/mypy --strict src

bench: $(STAMP)
	$(PY) benchmarks/throughput.py

bench-net: $(STAMP)
	$(PY) benchmarks/net.py

bench-stream: $(STAMP)
	$(PY) benchmarks/streaming.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist
