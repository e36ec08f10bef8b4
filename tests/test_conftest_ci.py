"""The ../shared guard: tests on real data skip on a developer's machine without it, and fail in CI."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import shared_dataset


def test_missing_dataset_fails_in_ci(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI: .*nothing.*not present"):
        shared_dataset(tmp_path / "nothing", "annotations")


def test_missing_dataset_skips_outside_ci(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="nothing.*not present"):
        shared_dataset(tmp_path / "nothing", "annotations")


def test_present_dataset_is_returned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    (tmp_path / "annotations").mkdir()
    assert shared_dataset(tmp_path, "annotations") == tmp_path
