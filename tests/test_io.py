from __future__ import annotations

import json

import numpy as np
import pytest

from rcnn import io
from rcnn.errors import DataError
from rcnn.io import atomic_path, find_images, load_rgb, write_json
from tests.conftest import write_image


def test_failed_write_keeps_the_earlier_file(tmp_path):
    path = tmp_path / "report.json"
    write_json(path, {"ok": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half a fi")
            raise RuntimeError("crash mid-write")
    assert json.loads(path.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temporary left behind


def test_images_of_every_mode_load_as_rgb(tmp_path):
    for mode in ("L", "RGBA", "P", "1", "I;16"):
        img = load_rgb(write_image(tmp_path / f"{mode.replace(';', '')}.png", mode=mode))
        assert img.shape == (48, 64, 3) and img.dtype == np.uint8 and img.flags.writeable


def test_bad_images_are_data_errors(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="not found"):
        load_rgb(tmp_path / "nope.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 junk")
    with pytest.raises(DataError, match="cannot read image"):
        load_rgb(tmp_path / "bad.jpg")
    monkeypatch.setattr(io, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(DataError, match="64x48, larger than 1000 pixels"):
        load_rgb(write_image(tmp_path / "big.png"))


def test_find_images_files_folders_globs(tmp_path):
    write_image(tmp_path / "a" / "x.png")
    write_image(tmp_path / "a" / "sub" / "y.jpg")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    found = find_images([str(tmp_path / "a"), str(tmp_path / "a" / "*.png")])
    assert sorted(p.name for p in found) == ["x.png", "y.jpg"]  # recursive, deduplicated
    with pytest.raises(DataError, match="no such file"):
        find_images([str(tmp_path / "missing*.jpg")])
