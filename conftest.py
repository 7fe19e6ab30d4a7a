"""The Python blocks of README.md and docs/: each one runs as written.

Sybil (https://sybil.readthedocs.io) finds the blocks and makes each one a
test item, named by its file and line.  A block that cannot run on its own
(a method body, a listing of signatures) is marked in the Markdown with an
HTML comment on the line before it, which MkDocs renders as nothing:

    <!-- skip: next -->

or, for a block that needs a newer Python than the oldest supported, with
the condition (``sys`` is there to test):

    <!-- skip: next if(sys.version_info < (3, 11), reason="except* needs Python 3.11") -->

A ```text block right after the comment ``<!-- output -->`` shows what the
Python block before it prints: its stdout, its stderr (where logging
writes), or both, as a terminal shows them; ``...`` stands for any text, as
in doctest.

Each block runs on its own, as a reader who copies it would run it: written
to a file of its own and run by a fresh ``sys.executable`` (through
``tests/run_snippet.py``, which then checks that it left no task pending
and no thread running), with every warning an error, as in the suite.  So
no block leans on an import or a name of the block before it, and none
leaves state (a logging handler, a Qt application, an event loop policy)
to the next.  Qt runs on the offscreen platform, Tk on the tests' X display
(``DISPLAY``, or the Xvfb server tests/backends/tk.py starts).  A block
whose toolkit is missing here is skipped with the reason, except under
``QIOTASK_REQUIRE_ALL_LOOPS=1`` (CI), where that is a failure.
"""

from __future__ import annotations

import doctest
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest
from sybil import Document, Example, Region, Sybil
from sybil.parsers.markdown import CodeBlockParser, SkipParser
from sybil.parsers.markdown.lexers import DirectiveInHTMLCommentLexer, FencedCodeBlockLexer

ROOT = Path(__file__).resolve().parent
RUNNER = ROOT / "tests" / "run_snippet.py"

# How long one block may run, in seconds: below pytest-timeout's 60, so that
# a block that hangs fails with its output rather than stopping the run.
# Each one takes well under a second, but for the Dask cluster's start.
BLOCK_TIMEOUT = 50.0

# As tests/conftest.py's STRICT_WARNINGS: every warning is an error, but for
# PyGObject's use of the event loop policy API that Python 3.14 deprecates.
STRICT_WARNINGS = ["-W", "error", "-W", "ignore:'asyncio.:DeprecationWarning:gi.events"]

# The toolkits a block may need: the module that tells whether each one is
# installed, and the modules whose import in a block means it needs it.
TOOLKIT_MODULES = {
    "glib": "gi",
    "qt": "PySide6",
    "tk": "tkinter",
    "trio": "trio",
    "uvloop": "uvloop",
    "dask": "distributed",
}
NEEDS = {
    "gi": "glib",
    "qiotask.loops.glib": "glib",
    "PySide6": "qt",
    "qiotask.loops.qt": "qt",
    "tkinter": "tk",
    "qiotask.loops.tk": "tk",
    "trio": "trio",
    "qiotask.loops.trio": "trio",
    "uvloop": "uvloop",
    "distributed": "dask",
}

IMPORT = re.compile(r"^\s*(?:from|import)\s+([\w.]+)", re.MULTILINE)
# A block that needs uvloop without importing it.
UVLOOP_CONTEXT = re.compile(r"\buvloop=True\b")


def unavailable(toolkit: str, reason: str) -> NoReturn:
    """Skip, or under QIOTASK_REQUIRE_ALL_LOOPS=1 fail: ``toolkit`` cannot be used here."""
    message = f"the {toolkit!r} toolkit cannot be loaded here: {reason}"
    if os.environ.get("QIOTASK_REQUIRE_ALL_LOOPS") == "1":
        pytest.fail(message + " (QIOTASK_REQUIRE_ALL_LOOPS=1)")
    pytest.skip(message)


def toolkits_of(source: str) -> set[str]:
    """The toolkits the block uses, named as the extras that install them."""
    toolkits = {
        toolkit
        for module in IMPORT.findall(source)
        for prefix, toolkit in NEEDS.items()
        if module == prefix or module.startswith(prefix + ".")
    }
    if UVLOOP_CONTEXT.search(source):  # MainContext(uvloop=True)
        toolkits.add("uvloop")
    return toolkits


def require(toolkit: str) -> None:
    """Skip (or fail) unless ``toolkit`` can be used here."""
    module = TOOLKIT_MODULES[toolkit]
    try:
        found = importlib.util.find_spec(module) is not None
    except ImportError as exc:  # a parent package that fails to import
        unavailable(toolkit, f"{type(exc).__name__}: {exc}")
    if not found:
        unavailable(toolkit, f"No module named {module!r}")
    if toolkit == "tk":
        try:
            from tests.backends import tk  # starts Xvfb when DISPLAY is unusable

            tk.ensure_display()
        except (ImportError, RuntimeError, OSError) as exc:
            unavailable(toolkit, f"{type(exc).__name__}: {exc}")


# Where run_block leaves the output of the block it ran, in the document's
# namespace, for an ``<!-- output -->`` block after it.
OUTPUT = "__qiotask_output__"


def run_block(example: Example) -> str | None:
    """Sybil's evaluator: run the block in a child interpreter; a str is a failure."""
    example.namespace[OUTPUT] = None
    source: str = example.parsed
    for toolkit in sorted(toolkits_of(source)):
        require(toolkit)
    where = f"{Path(example.path).relative_to(ROOT)}, line {example.line}"
    # Padded with blank lines: a traceback's line numbers are the Markdown file's.
    padded = "\n" * (example.line + example.parsed.line_offset) + source
    name = re.sub(r"\W", "_", str(Path(example.path).relative_to(ROOT))) + f"_line{example.line}.py"
    with tempfile.TemporaryDirectory(prefix="qiotask-docs-") as directory:
        script = Path(directory) / name
        script.write_text(padded, encoding="utf-8")
        try:
            done = subprocess.run(
                [sys.executable, *STRICT_WARNINGS, str(RUNNER), str(script)],
                env={**os.environ, "QT_QPA_PLATFORM": "offscreen"},
                cwd=directory,
                capture_output=True,
                text=True,
                timeout=BLOCK_TIMEOUT,
            )
        except subprocess.TimeoutExpired as exc:
            return f"the block at {where} ran over {BLOCK_TIMEOUT} s\n{_output(exc.stdout, exc.stderr)}"
    if done.returncode != 0:
        return f"the block at {where} failed (exit status {done.returncode})\n{_output(done.stdout, done.stderr)}"
    if done.stderr and not _output_shown_after(example):
        # A warning that was not an error, an exception logged by qiotask or
        # "ignored" by Python: the block did not run as cleanly as it reads.
        message = f"the block at {where} wrote to stderr, and no <!-- output --> block shows it"
        return f"{message}\n{_output(done.stdout, done.stderr)}"
    example.namespace[OUTPUT] = (example.region, done.stdout, done.stderr)
    return None


def _output_shown_after(example: Example) -> bool:
    """Whether an ``<!-- output -->`` block comes next, to be compared with the output."""
    regions = [region for _, region in example.document.regions]
    following = regions[regions.index(example.region) + 1 :]
    return bool(following) and following[0].evaluator is check_output


def _region_before(example: Example) -> Region | None:
    regions = [region for _, region in example.document.regions]
    index = regions.index(example.region)
    return regions[index - 1] if index else None


def check_output(example: Example) -> str | None:
    """Sybil's evaluator for an ``<!-- output -->`` block; a str is a failure."""
    output = example.namespace.get(OUTPUT)
    if output is None or output[0] is not _region_before(example):  # skipped, failed, or not Python
        pytest.skip("the Python block before it did not run")
    _, stdout, stderr = output
    expected: str = example.parsed
    checker = doctest.OutputChecker()
    if any(checker.check_output(expected, got, doctest.ELLIPSIS) for got in (stdout, stderr, stdout + stderr)):
        return None
    where = f"{Path(example.path).relative_to(ROOT)}, line {example.line}"
    return f"the block before {where} printed something else\n{_output(stdout, stderr)}"


class OutputParser:
    """Finds each ```text block that ``<!-- output -->`` introduces."""

    def __init__(self) -> None:
        self.comments = DirectiveInHTMLCommentLexer(directive="output")
        self.blocks = FencedCodeBlockLexer(language="text")

    def __call__(self, document: Document) -> Iterator[Region]:
        blocks = list(self.blocks(document))
        for comment in self.comments(document):
            block = next((block for block in blocks if block.start >= comment.end), None)  # in document order
            between = "" if block is None else document.text[comment.end : block.start]
            if block is None or between.replace("-->", "").strip():
                raise ValueError(f"{document.path}: <!-- output --> must come right before a ```text block")
            yield Region(comment.start, block.end, block.lexemes["source"], check_output)


def _output(stdout: str | bytes | None, stderr: str | bytes | None) -> str:
    def text(stream: str | bytes | None) -> str:
        if isinstance(stream, bytes):
            return stream.decode(errors="replace")
        return stream or ""

    return f"--- stdout ---\n{text(stdout)}--- stderr ---\n{text(stderr)}"


pytest_collect_file = Sybil(
    parsers=[CodeBlockParser(language="python", evaluator=run_block), SkipParser(), OutputParser()],
    patterns=["README.md", "docs/*.md", "docs/**/*.md"],
    # What the conditions of skip directives may use.
    setup=lambda namespace: namespace.update(sys=sys),
).pytest()
