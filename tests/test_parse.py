from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from rcnn.cli import main
from rcnn.errors import DataError
from rcnn.parse import Dataset, parse_annotation, parse_dataset, random_split
from tests.conftest import voc_xml, write_image


def make_voc(root: Path, files: dict[str, str], images: dict[str, str] | None = None) -> Path:
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir(parents=True)
    for name, xml in files.items():
        (root / "Annotations" / f"{name}.xml").write_text(xml)
    for name, mode in ({n: "RGB" for n in files} if images is None else images).items():
        write_image(root / "JPEGImages" / f"{name}.png", mode=mode)
    return root


def one(tmp_path: Path, xml: str, mode: str = "RGB"):
    make_voc(tmp_path, {"a": xml}, {"a": mode})
    return parse_annotation(tmp_path / "Annotations" / "a.xml", tmp_path / "JPEGImages")


def test_converts_voc_one_based_to_pixel_edges(tmp_path):
    ann, probs = one(tmp_path, voc_xml("a.png", [("cat", 1, 1, 10, 20)]))
    assert ann.objects[0].box == [0.0, 0.0, 10.0, 20.0]
    assert (ann.width, ann.height) == (64, 48)
    assert probs == []


def test_float_coordinates_and_missing_difficult(tmp_path):
    ann, _ = one(tmp_path, voc_xml("a.png", [("cat", "10.5", "5.25", "30.75", "40")]))
    assert ann.objects[0].box == [9.5, 4.25, 30.75, 40.0]
    assert ann.objects[0].difficult is False


def test_difficult_flag(tmp_path):
    ann, _ = one(tmp_path, voc_xml("a.png", [("cat", 2, 2, 20, 20, 1)]))
    assert ann.objects[0].difficult is True


def test_missing_size_is_read_from_image(tmp_path):
    ann, probs = one(tmp_path, voc_xml("a.png", [("cat", 2, 2, 20, 20)], size=None))
    assert (ann.width, ann.height) == (64, 48)
    assert any("missing <size>" in p.message for p in probs)


def test_wrong_size_uses_image(tmp_path):
    ann, probs = one(tmp_path, voc_xml("a.png", [("cat", 2, 2, 20, 20)], size=(640, 480)))
    assert (ann.width, ann.height) == (64, 48)
    assert any("differs" in p.message for p in probs)


def test_box_outside_image_is_clipped(tmp_path):
    ann, probs = one(tmp_path, voc_xml("a.png", [("cat", -5, 3, 100, 30)]))
    assert ann.objects[0].box == [0.0, 2.0, 64.0, 30.0]
    assert any("clipped" in p.message and "object 0 (cat)" in p.message for p in probs)


@pytest.mark.parametrize("box", [(10, 10, 9, 20), (30, 10, 20, 20), (70, 10, 90, 20), ("a", 1, 2, 3)])
def test_degenerate_or_bad_box_is_skipped_with_warning(tmp_path, box):
    ann, probs = one(tmp_path, voc_xml("a.png", [("cat", *box), ("dog", 2, 2, 20, 20)]))
    assert [o.label for o in ann.objects] == ["dog"]
    assert len(probs) == 1 and "object 0 (cat)" in probs[0].message and probs[0].level == "warning"
    assert "a.xml" in probs[0].file


def test_filename_disagreeing_with_xml_name(tmp_path):
    ann, probs = one(tmp_path, voc_xml("other_name.jpg", [("cat", 2, 2, 20, 20)]))
    assert ann.path.endswith("a.png")
    assert any("other_name.jpg" in p.message for p in probs)


def test_image_without_objects_is_kept(tmp_path):
    ann, probs = one(tmp_path, voc_xml("a.png", []))
    assert ann is not None and ann.objects == [] and probs == []


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "1"])
def test_grayscale_rgba_palette_images(tmp_path, mode):
    ann, probs = one(tmp_path, voc_xml("a.png", [("cat", 2, 2, 20, 20)]), mode=mode)
    assert ann is not None and probs == []


def test_missing_image_is_an_error(tmp_path):
    make_voc(tmp_path, {"a": voc_xml("a.png", [])}, {})
    ann, probs = parse_annotation(tmp_path / "Annotations" / "a.xml", tmp_path / "JPEGImages")
    assert ann is None and probs[0].level == "error" and "image not found" in probs[0].message


def test_corrupt_image_is_an_error(tmp_path):
    make_voc(tmp_path, {"a": voc_xml("a.jpg", [])}, {})
    (tmp_path / "JPEGImages" / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    ann, probs = parse_annotation(tmp_path / "Annotations" / "a.xml", tmp_path / "JPEGImages")
    assert ann is None and "corrupt or unreadable image" in probs[0].message


def test_broken_xml_is_an_error(tmp_path):
    ann, probs = one(tmp_path, "<annotation><object>")
    assert ann is None and "broken XML" in probs[0].message


def test_entity_bomb_and_external_entities_are_refused(tmp_path):
    bomb = (
        '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>'
        "<annotation><filename>&lol2;</filename></annotation>"
    )
    ann, probs = one(tmp_path, bomb)
    assert ann is None and "entities" in probs[0].message
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET")
    xxe = (
        f'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file://{secret}">]>'
        "<annotation><filename>a.png</filename><object><name>&x;</name></object></annotation>"
    )
    (tmp_path / "Annotations" / "a.xml").write_text(xxe)
    ann, probs = parse_annotation(tmp_path / "Annotations" / "a.xml", tmp_path / "JPEGImages")
    assert ann is None and all("TOPSECRET" not in p.message for p in probs)


def test_class_filter_and_deterministic_split(tmp_path):
    files = {f"im{i}": voc_xml(f"im{i}.png", [("cat", 2, 2, 20, 20), ("dog", 30, 5, 60, 40)]) for i in range(10)}
    make_voc(tmp_path, files)
    ds = parse_dataset(tmp_path, classes=["cat"], test_fraction=0.3, seed=1)
    assert ds.classes == ["cat"]
    assert all([o.label for o in a.objects] == ["cat"] for a in ds.images)
    assert sum(a.split == "test" for a in ds.images) == 3
    again = parse_dataset(tmp_path, classes=["cat"], test_fraction=0.3, seed=1)
    assert [a.split for a in again.images] == [a.split for a in ds.images]
    assert random_split(["a", "b", "c", "d"], 0.5, 0) == random_split(["d", "c", "b", "a"], 0.5, 0)


def test_roundtrip_json(tmp_path, synth_data):
    ds = parse_dataset(synth_data)
    ds.save(tmp_path / "p.json")
    back = Dataset.load(tmp_path / "p.json")
    assert back.images == ds.images and back.classes == ds.classes


def test_strict_raises(tmp_path):
    make_voc(tmp_path, {"a": "<annotation>", "b": voc_xml("b.png", [])})
    with pytest.raises(DataError, match="a.xml"):
        parse_dataset(tmp_path, strict=True)


def test_cli_broken_folder_one_line_per_file_no_traceback(tmp_path):
    root = tmp_path / "broken"
    make_voc(root, {
        "good": voc_xml("good.png", [("cat", 2, 2, 20, 20)]),
        "badxml": "<annotation><size>",
        "noimage": voc_xml("noimage.png", []),
        "corrupt": voc_xml("corrupt.jpg", []),
        "wrongroot": "<foo/>",
    }, {"good": "RGB"})
    (root / "JPEGImages" / "corrupt.jpg").write_bytes(b"garbage")
    out = tmp_path / "p.json"
    res = CliRunner().invoke(main, ["parse", str(root), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 4
    for name in ("badxml", "noimage", "corrupt", "wrongroot"):
        assert sum(name + ".xml" in line for line in errors) == 1
    data = json.loads(out.read_text())
    assert [im["id"] for im in data["images"]] == ["good"]
    img = data["images"][0]
    assert set(img) >= {"path", "width", "height", "split", "objects"}
    assert img["objects"][0] == {"label": "cat", "box": [1.0, 1.0, 20.0, 20.0], "difficult": False, "truncated": False}


def test_cli_errors_are_one_line(tmp_path):
    res = CliRunner().invoke(main, ["parse", str(tmp_path), "--out", str(tmp_path / "x.json")])
    assert res.exit_code == 1 and "no VOC layout" in res.output and "Traceback" not in res.output


@pytest.mark.slow
def test_parse_raccoon(raccoon, tmp_path):
    out = tmp_path / "r.json"
    res = CliRunner().invoke(main, ["parse", str(raccoon), "--out", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert len(data["images"]) == 200
    assert sum(len(i["objects"]) for i in data["images"]) == 217
    assert sum(i["split"] == "train" for i in data["images"]) == 160
    assert sum(i["split"] == "test" for i in data["images"]) == 40
    from PIL import Image

    modes = {Image.open(i["path"]).mode for i in data["images"]}
    assert "L" in modes or len(modes) > 1  # grayscale images are among them
