"""A service's process settles its heap once started; a test process is left alone."""

from __future__ import annotations

import gc

import pytest

from sagakit import runtime


def test_a_services_process_freezes_what_start_up_left(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "_own_process", True)
    try:
        runtime.settle_heap()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_a_test_process_is_not_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "_own_process", False)
    runtime.settle_heap()
    assert gc.get_freeze_count() == 0

