"""What a user sees of the package before reading any code: its metadata
(the licence and where to find the docs) and the files shipped with it."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import qiotask

ROOT = Path(__file__).resolve().parents[1]


def test_the_metadata_names_the_licence_and_ships_its_text() -> None:
    meta = importlib.metadata.metadata("qiotask")
    assert meta["License-Expression"] == "MIT"
    assert meta.get_all("License-File") == ["LICENSE"]
    licence = (ROOT / "LICENSE").read_text()
    assert licence.startswith("MIT License")


def test_the_metadata_says_where_the_docs_changelog_and_issues_are() -> None:
    urls = dict(entry.split(", ", 1) for entry in importlib.metadata.metadata("qiotask").get_all("Project-URL") or [])
    assert set(urls) >= {"Homepage", "Documentation", "Changelog", "Issues"}
    assert all(url.startswith("https://") for url in urls.values())


def test_the_version_is_the_one_the_package_reports() -> None:
    assert importlib.metadata.version("qiotask") == qiotask.__version__


def test_every_supported_python_has_its_classifier() -> None:
    meta = importlib.metadata.metadata("qiotask")
    assert meta["Requires-Python"] == ">=3.10"
    classifiers = set(meta.get_all("Classifier") or [])
    for minor in range(10, 15):
        assert f"Programming Language :: Python :: 3.{minor}" in classifiers
