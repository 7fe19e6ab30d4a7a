# Each target creates .venv at the repository root when it is missing and
# installs the package (editable) with what that target needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The demo needs qiotask and the `demo` extra only (no toolkit): its own
# stamp, so `make demo` on a fresh clone installs just that.
DEMO_STAMP := $(VENV)/.installed-demo
# The loop toolkits, one extra each; installed one by one so that a machine
# without one (e.g. PyGObject's build needs libgirepository1.0-dev) still
# runs the rest.  The tests skip a missing loop with its reason, or fail
# under QIOTASK_REQUIRE_ALL_LOOPS=1 (CI, where .ci/run installs them all).
LOOP_EXTRAS := uvloop glib qt trio dask
# The PyGObject this machine's GLib can build (see .ci/pygobject).
PYGOBJECT := $(shell sh .ci/pygobject)

.PHONY: demo test lint docs bench bench-net bench-stream info clean

# The venv's own pip (Python 3.11's is 23.2) installs everything here; the
# full set-up upgrades it first, the demo's does not need to (it saves 4 s).
$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,lint,demo,bench]'
	@for extra in $(LOOP_EXTRAS); do \
		$(PY) -m pip install -q -e ".[$$extra]" $$( [ $$extra = glib ] && echo '$(PYGOBJECT)' ) >/dev/null 2>&1 \
			|| echo "note: the '$$extra' extra could not be installed here; its tests will be skipped"; \
	done
	touch $(STAMP)

$(DEMO_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[demo]'
	touch $(DEMO_STAMP)

DOCS_STAMP := $(VENV)/.installed-docs

$(DOCS_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[docs]'
	touch $(DOCS_STAMP)

demo: $(DEMO_STAMP)
	$(PY) -m qiotask demo

info: $(STAMP)
	$(PY) -m qiotask info

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check conftest.py src tests benchmarks examples docs/_mkdocs
	$(VENV)/bin/ruff format --check conftest.py src tests benchmarks examples docs/_mkdocs
	$(VENV)/bin/mypy --strict src
	$(VENV)/bin/mypy --strict examples/typed

# The site into site/; --strict fails on any warning: a broken link or
# anchor, a docstring griffe cannot read, a public name left out of the
# reference.  NO_MKDOCS_2_WARNING: Material's banner about MkDocs 2, printed
# on every build otherwise.
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

bench: $(STAMP)
	$(PY) benchmarks/throughput.py

bench-net: $(STAMP)
	$(PY) benchmarks/net.py

bench-stream: $(STAMP)
	$(PY) benchmarks/streaming.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist site
