"""The one table of loop adapters (qiotask._adapters)."""

from __future__ import annotations

import asyncio

import pytest

import qiotask
from qiotask import _adapters

pytestmark = pytest.mark.timeout(30)


def test_every_row_names_its_module_and_glib_is_asked_last() -> None:
    names = [spec.name for spec in _adapters.ADAPTERS]
    assert names == ["asyncio", "trio", "qt", "tk", "glib"]
    assert [spec.module for spec in _adapters.ADAPTERS] == [f"qiotask.loops.{name}" for name in names]
    assert [spec.name for spec in _adapters.ADAPTERS if spec.fallback] == ["glib"]


def test_an_adapter_outside_the_table_is_refused() -> None:
    adapter = _adapters.Adapter(accepts=lambda obj: False, attach=lambda obj: qiotask.default_context())
    with pytest.raises(ValueError, match=r"no adapter named 'wx' in qiotask._adapters.ADAPTERS"):
        _adapters.register("wx", adapter)


def test_attach_names_every_kind_of_the_table_when_it_refuses() -> None:
    with pytest.raises(TypeError) as info:
        qiotask.attach(object())
    for spec in _adapters.ADAPTERS:
        assert spec.kind in str(info.value)


def test_the_running_framework_is_asked_through_its_adapter() -> None:
    assert _adapters.async_adapter() is None  # no loop runs in this thread

    async def main() -> _adapters.Adapter | None:
        return _adapters.async_adapter()

    adapter = asyncio.run(main())
    assert adapter is not None and adapter.is_cancellation is not None
    assert adapter.is_cancellation(asyncio.CancelledError())
    assert not adapter.is_cancellation(ValueError())
