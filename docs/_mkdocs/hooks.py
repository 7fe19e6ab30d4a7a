"""MkDocs hook: the repository's top-level README.md and CHANGELOG.md as pages.

The guide in docs/ is written to read on GitHub, so it links to the files
beside it as ``../README.md`` and ``../CHANGELOG.md``, and the README links
into ``docs/``.  Those files are outside the site's docs_dir, where MkDocs
(strict) reports such links as broken.  This hook adds the two files as
pages (``readme.md``, ``changelog.md``) and, in every page, rewrites each
relative link by what it points to in the repository (resolved against the
page's place there):

- a file the site has as a page (or copies, as an image): a link to it in
  the site;
- any other file of the repository (``../examples/...``, ``../src/...``): a
  link to it on the repository's web page, ``repo_url`` in mkdocs.yml;
- nothing: the link is left alone, so the build (strict) fails on it.

It also checks that the package's reference page, which sorts the names by
topic by hand, lists every name in ``qiotask.__all__``.
"""

from __future__ import annotations

import ast
import logging
import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
# Loggers under "mkdocs." count as the build's warnings: --strict fails on them.
log = logging.getLogger("mkdocs.hooks.qiotask")

#: Repository files that become pages: path in the repository -> page.
EXTRA_PAGES = {"README.md": "readme.md", "CHANGELOG.md": "changelog.md"}

# An inline link or image target, ``](target)`` or ``](target "title")``,
# and a reference definition, ``[label]: target``.
_INLINE = re.compile(r"(\]\()([^)\s]+)")
_REFERENCE = re.compile(r"^( {0,3}\[[^\]]+\]:[ \t]*)(\S+)", re.MULTILINE)
# A fenced code block: links inside it are code, not links.
_FENCE = re.compile(r"^( {0,3})(```|~~~).*?^\1\2[ \t]*$", re.MULTILINE | re.DOTALL)


def on_files(files: Files, config: Any) -> Files:
    for source, page in EXTRA_PAGES.items():
        files.append(File.generated(config, page, abs_src_path=str(ROOT / source)))
    return files


def _repo_path(page_uri: str) -> str:
    """Where the page with this docs_dir-relative path lives in the repository."""
    for source, page in EXTRA_PAGES.items():
        if page_uri == page:
            return source
    return "docs/" + page_uri


def _site_path(repo_path: str) -> str | None:
    """The docs_dir-relative path of a repository file, None if the site lacks it."""
    if repo_path in EXTRA_PAGES:
        return EXTRA_PAGES[repo_path]
    if repo_path.startswith("docs/"):
        return repo_path.removeprefix("docs/")
    return None


def _rewrite(target: str, page_uri: str, repo_url: str | None = None) -> str:
    if re.match(r"^[a-z][a-z0-9+.-]*:|^#|^/", target, re.IGNORECASE):
        return target  # a URL, an anchor on this page, or an absolute path
    path, hash_, anchor = target.partition("#")
    repo_dir = posixpath.dirname(_repo_path(page_uri))
    resolved = posixpath.normpath(posixpath.join(repo_dir, path))
    site = _site_path(resolved)
    if site is not None:
        return posixpath.relpath(site, posixpath.dirname(page_uri) or ".") + hash_ + anchor
    if repo_url and not resolved.startswith("../") and (ROOT / resolved).exists():
        kind = "tree" if (ROOT / resolved).is_dir() else "blob"
        return f"{repo_url.rstrip('/')}/{kind}/main/{resolved}" + hash_ + anchor
    return target


def _public_names() -> list[str]:
    """``qiotask.__all__``, read from the source without importing it."""
    tree = ast.parse((ROOT / "src" / "qiotask" / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return list(ast.literal_eval(node.value))
    return []


def _check_package_page(markdown: str, page_uri: str) -> None:
    """Each public name has a ``::: qiotask.NAME`` block, or is named as
    ```qiotask.NAME``` (a module with a page of its own, ``__version__``)."""
    covered = set(re.findall(r"^::: qiotask\.(\w+)\s*$", markdown, re.MULTILINE))
    covered |= set(re.findall(r"`qiotask\.(\w+)`", markdown))
    missing = [name for name in _public_names() if name not in covered]
    if missing:
        log.warning("%s does not document %s, from qiotask.__all__", page_uri, ", ".join(missing))


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    page_uri = page.file.src_uri
    if page_uri == "reference/qiotask.md":
        _check_package_page(markdown, page_uri)

    repo_url = config["repo_url"]

    def outside_fences(text: str) -> str:
        text = _INLINE.sub(lambda m: m.group(1) + _rewrite(m.group(2), page_uri, repo_url), text)
        return _REFERENCE.sub(lambda m: m.group(1) + _rewrite(m.group(2), page_uri, repo_url), text)

    parts = []
    last = 0
    for fence in _FENCE.finditer(markdown):
        parts.append(outside_fences(markdown[last : fence.start()]))
        parts.append(fence.group(0))
        last = fence.end()
    parts.append(outside_fences(markdown[last:]))
    return "".join(parts)
