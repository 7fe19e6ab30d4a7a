"""Types that help: ``mypy --strict`` accepts the typed examples in
``examples/typed/`` and rejects wrong types, and the examples run.

mypy runs once for the module (a few seconds, with a cache of its own in a
temporary directory); without mypy installed the type checks are skipped.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

import qiotask

from .conftest import STRICT_WARNINGS

TYPED = Path(__file__).resolve().parent.parent / "examples" / "typed"
EXAMPLES = sorted(TYPED.glob("*.py"))
TIMEOUT = 120.0

#: Each line marked ``# E: <code>`` must be a mypy error of that code; no
#: other line may be one.  The first lines are the README's pattern.
WRONG = """\
import qiotask


def done(source: object, err: BaseException | None, opaque: object) -> None:
    pass


task = qiotask.Task("localhost", done)  # no annotation needed: a Task[Any]
typed: qiotask.Task[int] = qiotask.Task(None)
maybe: int | None = typed.get_result()
sure: int = typed.result()
not_none: int = typed.get_result()  # E: assignment
wrong: str = typed.result()  # E: assignment


def worker(task: qiotask.Task[int], opaque: object) -> str:
    return "not an int"


typed.run_in_thread(worker)  # E: arg-type


async def main() -> None:
    awaited: str = await typed  # E: assignment
    length: str = await qiotask.to_thread(len, "abc")  # E: arg-type
    also: int = await qiotask.run_sync(len, "abc")
    context: qiotask.MainContext = typed.context
"""


@pytest.fixture(scope="module")
def mypy_errors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[tuple[int, str]]]:
    """mypy --strict over the examples and WRONG: {file name: {(line, code)}}."""
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (the lint extra)")
    where = tmp_path_factory.mktemp("typing")
    wrong = where / "wrong_types.py"
    wrong.write_text(WRONG)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--python-version",
            f"{sys.version_info[0]}.{sys.version_info[1]}",
            "--cache-dir",
            str(where / "cache"),
            "--show-error-codes",
            "--no-pretty",
            *map(str, EXAMPLES),
            str(wrong),
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode in (0, 1), done.stdout + done.stderr
    errors: dict[str, set[tuple[int, str]]] = {}
    for line in done.stdout.splitlines():
        found = re.match(r"(.+?):(\d+): error: .*\[([\w-]+)\]$", line)
        if found:
            errors.setdefault(Path(found[1]).name, set()).add((int(found[2]), found[3]))
    return errors


def test_typed_examples_pass_mypy_strict_and_task_stays_plain_at_run_time(
    mypy_errors: dict[str, set[tuple[int, str]]],
) -> None:
    assert len(EXAMPLES) >= 2
    assert {path.name: mypy_errors.get(path.name, set()) for path in EXAMPLES} == {
        path.name: set() for path in EXAMPLES
    }
    # The TypeVar's default is for type checkers only: at run time a plain
    # TypeVar (Task[int] works on 3.10), and no typing_extensions import.
    assert qiotask.Task[int] is not None
    assert len(qiotask.Task.__parameters__) == 1
    done = subprocess.run(
        [sys.executable, "-c", "import sys, qiotask; print('typing_extensions' in sys.modules)"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.stdout.strip() == "False", done.stderr


def test_mypy_strict_rejects_wrong_types_and_needs_no_annotation(
    mypy_errors: dict[str, set[tuple[int, str]]],
) -> None:
    expected = {
        (number, line.rsplit("# E: ", 1)[1])
        for number, line in enumerate(WRONG.splitlines(), start=1)
        if "# E: " in line
    }
    assert mypy_errors.get("wrong_types.py", set()) == expected


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.name)
def test_typed_examples_run(example: Path) -> None:
    done = subprocess.run(
        [sys.executable, *STRICT_WARNINGS, str(example)], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout
