"""The garbage collector's settings during a run, and their return after it."""

from __future__ import annotations

import gc

import pytest

from orchestrator.runtime.collector import YOUNG_THRESHOLD, fewer_collections


def test_a_run_freezes_earlier_objects_and_collects_less_often() -> None:
    threshold, frozen = gc.get_threshold(), gc.get_freeze_count()
    survivor = [object() for _ in range(10)]
    with fewer_collections():
        assert gc.get_threshold() == (YOUNG_THRESHOLD, threshold[1], threshold[2])
        assert gc.get_freeze_count() >= frozen + len(survivor)
    assert gc.get_threshold() == threshold
    assert gc.get_freeze_count() == frozen


def test_settings_come_back_when_the_last_of_overlapping_runs_ends() -> None:
    threshold = gc.get_threshold()
    with fewer_collections():
        with fewer_collections():
            assert gc.get_threshold()[0] == YOUNG_THRESHOLD
        assert gc.get_threshold()[0] == YOUNG_THRESHOLD  # the other run still goes on
    assert gc.get_threshold() == threshold


def test_settings_come_back_when_a_run_fails() -> None:
    threshold, frozen = gc.get_threshold(), gc.get_freeze_count()
    with pytest.raises(KeyboardInterrupt), fewer_collections():
        raise KeyboardInterrupt
    assert gc.get_threshold() == threshold
    assert gc.get_freeze_count() == frozen
