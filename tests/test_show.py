"""`rcnn show`: the ground truth drawn, and a one-page summary of the labels (issue 12, item 5)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from lxml import etree
from PIL import Image

from rcnn.cli import main
from rcnn.errors import DataError
from rcnn.parse import Dataset, parse_dataset
from rcnn.show import box_stats, show_dataset
from tests.convert import to_coco


def xml_counts(data: Path) -> dict[str, int]:
    """Objects per class, counted from the XML files themselves (not through rcnn.parse)."""
    counts: dict[str, int] = {}
    for f in sorted((data / "Annotations").glob("*.xml")):
        for name in etree.parse(str(f)).getroot().iter("name"):
            counts[name.text] = counts.get(name.text, 0) + 1
    return counts


def invoke(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(main, list(args))
    assert "Traceback" not in res.output, res.output
    return res.exit_code, res.output


def test_show_a_voc_folder(synth_data, tmp_path):
    code, out = invoke("show", str(synth_data), "--out", str(tmp_path / "show"), "--max-images", "5")
    assert code == 0, out
    s = json.loads((tmp_path / "show" / "summary.json").read_text())
    assert s["objects_per_class"] == xml_counts(synth_data) and s["images"] == 12 and s["images_drawn"] == 5
    assert s["dataset"]["images_per_split"]["train"] + s["dataset"]["images_per_split"]["test"] == 12
    drawn = sorted((tmp_path / "show" / "images").iterdir())
    assert [p.stem for p in drawn] == [f"synth_{k:04d}" for k in range(5)]
    with Image.open(tmp_path / "show" / "labels.png") as im:
        assert im.text.get("rcnn") == "show" and im.size[0] >= 800
    # the boxes are drawn: pixels changed along the first box's top edge
    ds = parse_dataset(synth_data)
    k, a = next((k, a) for k, a in enumerate(ds.images[:5]) if a.objects)
    x1, y1, x2, y2 = (int(v) for v in a.objects[0].box)
    with Image.open(a.path) as im0, Image.open(drawn[k]) as im1:
        before, after = np.asarray(im0.convert("RGB"), np.int16), np.asarray(im1.convert("RGB"), np.int16)
    assert np.abs(after[y1 + 1, x1 + 20: x2 - 1] - before[y1 + 1, x1 + 20: x2 - 1]).mean() > 40
    assert json.loads((tmp_path / "show" / ".rcnn.json").read_text())["kind"] == "show"


def test_show_a_parsed_file_split_and_a_coco_copy(synth_data, synth_parsed, tmp_path):
    ds = Dataset.load(synth_parsed)
    r = show_dataset(synth_parsed, tmp_path / "a", split="test", max_images=0, echo=lambda s: None)
    assert r.images_drawn == len(ds.split("test")) == r.summary["images"]
    assert r.summary["objects"] == sum(len(a.objects) for a in ds.split("test"))
    r2 = show_dataset(to_coco(ds, tmp_path / "coco"), tmp_path / "b", split="test", echo=lambda s: None)
    assert r2.summary == r.summary


def test_box_stats_by_hand():
    from rcnn.parse import Annotation, Object

    a = Annotation("a", "/x.jpg", 200, 100, "train", [Object("cat", [0, 0, 50, 100]), Object("cat", [100, 50, 200, 75])])
    s = box_stats([a])
    assert s["w"].tolist() == [0.25, 0.5] and s["h"].tolist() == [1.0, 0.25] and s["aspect"].tolist() == [0.5, 4.0]
    assert s["cx"].tolist() == [0.125, 0.75] and s["cy"].tolist() == [0.5, 0.625]
    assert box_stats([])["w"].shape == (0,)


def test_show_refuses_a_user_folder_and_bad_input(synth_data, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("mine\n")
    code, out = invoke("show", str(synth_data), "--out", str(tmp_path / "mine"))
    assert code == 1 and "rcnn did not write" in out and (tmp_path / "mine" / "keep.txt").read_text() == "mine\n"
    bad = tmp_path / "bad.json"
    bad.write_text("{broken")
    code, out = invoke("show", str(bad), "--out", str(tmp_path / "o"))
    assert code == 1 and "bad.json" in out and len(out.strip().splitlines()) <= 2
    with pytest.raises(ValueError, match="max_images"):
        show_dataset(synth_data, tmp_path / "o2", max_images=-1)
