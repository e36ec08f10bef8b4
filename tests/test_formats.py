"""`rcnn parse` reads Pascal VOC, COCO JSON and YOLO txt into the same records (issue 12, item 1).

The converters of ``tests/convert.py`` write one dataset in the other two formats; every reader must give back
the records of the original: same ids, image paths, sizes, splits, labels, difficult flags, and boxes equal
(COCO: exactly, its pixel boxes are the records' own numbers; YOLO: within :func:`tests.convert.yolo_tolerance`,
the rounding of its 6-decimal normalised coordinates).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import rcnn.cli
from rcnn.cli import main
from rcnn.errors import DataError
from rcnn.parse import FORMATS, Dataset, assign_splits, detect_format, parse_dataset, split_name
from tests.conftest import write_image
from tests.convert import record_differences, to_coco, to_yolo, yolo_tolerance


def parse(*args: str) -> tuple[int, str, str]:
    """`rcnn parse ARGS`: (exit code, stdout, stderr), asserting it ended cleanly: a normal exit or a one-line
    error, never an escaped exception, a traceback or a bug reported as an unexpected error."""
    res = CliRunner().invoke(main, ["parse", *args])
    clean_exit = res.exception is None or isinstance(res.exception, SystemExit)
    assert clean_exit and "Traceback" not in res.output and "unexpected error" not in res.output, res.output
    return res.exit_code, res.stdout, res.stderr


@pytest.mark.parametrize("failure", ["bug", "traceback"])
def test_the_parse_helper_can_fail(monkeypatch, tmp_path, failure):
    """The helper above fails on a crash that the CLI turns into an exit code: a bug reported as an unexpected
    error, or a traceback printed before a clean-looking exit (both exit through SystemExit)."""
    def broken(*args, **kwargs):
        if failure == "bug":
            raise RuntimeError("a bug")
        click.echo("Traceback (most recent call last):", err=True)
        raise DataError("stopped")

    monkeypatch.setattr("rcnn.parse.parse_dataset", broken)
    with pytest.raises(AssertionError):
        parse(str(tmp_path), "--out", str(tmp_path / "p.json"))


@pytest.fixture(scope="module")
def voc(synth_data: Path) -> Dataset:
    return parse_dataset(synth_data)


@pytest.mark.parametrize("fmt", ["coco", "yolo-list", "yolo-dict", "yolo-classes.txt"])
def test_one_dataset_in_three_formats_gives_the_same_records(voc, tmp_path, fmt):
    assert {a.split for a in voc.images} == {"train", "test"} and sum(len(a.objects) for a in voc.images) > 10
    data = to_coco(voc, tmp_path / "d") if fmt == "coco" else to_yolo(voc, tmp_path / "d", fmt.split("-", 1)[1])
    assert detect_format(data) == fmt.split("-")[0]
    ds = parse_dataset(data)
    assert record_differences(voc, ds, 1e-9 if fmt == "coco" else yolo_tolerance) == []
    assert ds.problems == []
    assert [a.id for a in ds.images] == [a.id for a in voc.images]  # the same order: sorted by id
    # the CLI writes the same schema
    code, out, err = parse(str(data), "--out", str(tmp_path / "p.json"))
    assert code == 0, err
    d = json.loads((tmp_path / "p.json").read_text())
    assert set(d["images"][0]) >= {"path", "width", "height", "split", "objects"} and "problems" in d
    assert set(next(o for a in d["images"] for o in a["objects"])) >= {"label", "box", "difficult"}


def test_the_converters_can_fail(voc, tmp_path):
    """record_differences sees a moved box, a changed split and a dropped object."""
    data = to_yolo(voc, tmp_path / "d")
    label = next(p for p in sorted((data / "labels").rglob("*.txt")) if p.read_text().count("\n") >= 2)
    lines = label.read_text().splitlines()
    cls, cx, *rest = lines[0].split()
    label.write_text("\n".join([f"{cls} {float(cx) + 0.01:.6f} {' '.join(rest)}", *lines[2:]]) + "\n")
    diffs = record_differences(voc, parse_dataset(data), yolo_tolerance)
    assert len(diffs) == 1 and label.stem in diffs[0] and "objects" in diffs[0]
    label.write_text("\n".join([f"{cls} {float(cx) + 0.01:.6f} {' '.join(rest)}", *lines[1:]]) + "\n")
    diffs = record_differences(voc, parse_dataset(data), yolo_tolerance)
    assert len(diffs) == 1 and "object 0 box" in diffs[0]


@pytest.mark.slow
def test_raccoon_as_coco_and_yolo_gives_the_voc_records(raccoon, tmp_path):
    voc = parse_dataset(raccoon)
    assert len(voc.split("train")) == 160 and len(voc.split("test")) == 40
    coco = parse_dataset(to_coco(voc, tmp_path / "coco"))
    yolo = parse_dataset(to_yolo(voc, tmp_path / "yolo"))
    assert record_differences(voc, coco) == []  # COCO's pixel boxes: the same floats
    assert record_differences(voc, yolo, yolo_tolerance) == []
    assert record_differences(voc, yolo, 1e-4) != []  # the tolerance is needed (6 decimals of a 650 px image)
    assert coco.problems == yolo.problems == [] and coco.classes == yolo.classes == ["raccoon"]
    assert sorted(p.name for p in (tmp_path / "coco" / "annotations").iterdir()) == ["instances_test.json", "instances_train.json"]


# --------------------------------------------------------------------------- hand-made files, values checked by hand


def coco_file(path: Path, images: list[dict], annotations: list[dict], categories=({"id": 7, "name": "cat"},)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": list(categories)}))
    return path


def test_coco_bbox_iscrowd_and_bad_entries(tmp_path):
    write_image(tmp_path / "images" / "a.png")  # 64 x 48
    write_image(tmp_path / "images" / "b.png")
    anns = [
        {"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 5, 20, 30], "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 7, "bbox": [0.5, 1.5, 4, 4], "iscrowd": 1},
        {"id": 3, "image_id": 1, "category_id": 7, "bbox": [50, 40, 30, 30]},  # outside: clipped to [50, 40, 64, 48]
        {"id": 4, "image_id": 99, "category_id": 7, "bbox": [1, 1, 5, 5]},  # unknown image
        {"id": 5, "image_id": 1, "category_id": 8, "bbox": [1, 1, 5, 5]},  # unknown category
        {"id": 6, "image_id": 1, "category_id": 7, "bbox": [1, 1, "x", 5]},
        {"id": 7, "image_id": 1, "category_id": 7, "bbox": [10, 10, 0.5, 5]},  # degenerate
    ]
    images = [{"id": 1, "file_name": "a.png", "width": 64, "height": 48}, {"id": 2, "file_name": "b.png"},
              {"id": 3, "file_name": "ghost.png"}]
    f = coco_file(tmp_path / "annotations" / "instances_train.json", images, anns)
    ds = parse_dataset(tmp_path)
    (a,) = [x for x in ds.images if x.id == "a"]
    assert [(o.box, o.difficult) for o in a.objects] == [([10.0, 5.0, 30.0, 35.0], False), ([0.5, 1.5, 4.5, 5.5], True),
                                                          ([50.0, 40.0, 64.0, 48.0], False)]
    assert [x.id for x in ds.images] == ["a", "b"] and {x.split for x in ds.images} == {"train"}
    assert a.annotation == str(f.resolve()) and ds.classes == ["cat"]
    text = [str(p) for p in ds.problems]
    assert sum("image_id 99" in t for t in text) == 1 and sum("category_id 8" in t for t in text) == 1
    assert any("annotation 6" in t and "bbox" in t for t in text) and any("annotation 7" in t and "degenerate" in t for t in text)
    assert any("annotation 3" in t and "clipped" in t for t in text)
    (ghost,) = [p for p in ds.problems if p.level == "error"]
    assert "ghost.png" in ghost.message and "not found" in ghost.message
    assert all("\n" not in t for t in text)


def test_coco_file_given_directly_with_a_random_split_and_an_image_folder(tmp_path):
    for k in range(10):
        write_image(tmp_path / "pics" / f"im{k}.png")
    f = coco_file(tmp_path / "export.json", [{"id": k, "file_name": f"im{k}.png"} for k in range(10)],
                  [{"id": k, "image_id": k, "category_id": 7, "bbox": [2, 2, 10, 10]} for k in range(10)])
    code, _, err = parse(str(f), "--out", str(tmp_path / "p.json"))
    assert code == 1 and "im0.png" in err and "not found" in err  # no images/ folder: named per image
    ds = parse_dataset(f, images_dir=tmp_path / "pics", test_fraction=0.3)
    assert len(ds.split("test")) == 3 and len(ds.split("train")) == 7


def test_yolo_lines_by_hand_and_bad_lines(tmp_path):
    write_image(tmp_path / "images" / "train" / "a.png")  # 64 x 48
    write_image(tmp_path / "images" / "val" / "b.png")
    (tmp_path / "labels" / "train").mkdir(parents=True)
    (tmp_path / "labels" / "train" / "a.txt").write_text(
        "0 0.5 0.5 0.25 0.5\n"  # -> [24, 12, 40, 36]
        "1 0.1 0.1 0.2 0.2 0.3 0.4\n"  # a polygon: its bounding box [6.4, 4.8, 19.2, 19.2]
        "\n"
        "0 0.5 0.5 0.25\n"  # 4 fields
        "5 0.5 0.5 0.1 0.1\n"  # class out of range
        "0 nan 0.5 0.1 0.1\n"
        "0.5 0.5 0.5 0.1 0.1\n"  # a class id that is not an integer
        "1 1.2 0.5 0.5 0.5\n")  # sticks out: clipped to [0.95 W .. W]
    (tmp_path / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames: {0: cat, 1: dog}\n")
    ds = parse_dataset(tmp_path)
    a, b = ds.images
    assert a.id == "a" and a.split == "train" and b.split == "test"  # val without a test split is the test split
    assert [o.label for o in a.objects] == ["cat", "dog", "dog"]
    assert a.objects[0].box == pytest.approx([24, 12, 40, 36]) and a.objects[1].box == pytest.approx([6.4, 4.8, 19.2, 19.2])
    assert a.objects[2].box == pytest.approx([60.8, 12, 64, 36])
    assert b.objects == [] and b.annotation == ""  # no label file: an image without objects
    text = [p.message for p in ds.problems]
    for k, what in ((4, "4 fields"), (5, "class id '5'"), (6, "'nan'"), (7, "class id '0.5'"), (8, "clipped")):
        assert any(m.startswith(f"line {k}") and what in m for m in text), (k, text)
    assert len(text) == 5 and all(p.file.endswith("a.txt") for p in ds.problems)


def test_yolo_yaml_is_never_executed_and_urls_are_not_read(tmp_path):
    write_image(tmp_path / "images" / "train" / "a.png")
    marker = tmp_path / "PWNED"
    (tmp_path / "data.yaml").write_text(f"names: !!python/object/apply:os.system ['touch {marker}']\ntrain: images/train\n")
    with pytest.raises(DataError, match="data.yaml is not usable YAML"):
        parse_dataset(tmp_path)
    assert not marker.exists()
    (tmp_path / "data.yaml").write_text("path: https://example.com/ds\ntrain: images/train\nnames: [cat]\n")
    with pytest.raises(DataError, match="only local folders"):
        parse_dataset(tmp_path)
    (tmp_path / "data.yaml").write_text("train: images/train\nval: images/nowhere\nnames: [cat]\n")
    with pytest.raises(DataError, match="'val' folder not found"):
        parse_dataset(tmp_path)
    (tmp_path / "data.yaml").write_text("train: [images/train\n")
    code, _, err = parse(str(tmp_path), "--out", str(tmp_path / "p.json"))
    assert code == 1 and len(err.strip().splitlines()) == 1 and "data.yaml" in err


def test_broken_coco_json_is_one_line_and_skipped(tmp_path):
    write_image(tmp_path / "images" / "a.png")
    coco_file(tmp_path / "annotations" / "instances_train.json", [{"id": 1, "file_name": "a.png"}], [])
    (tmp_path / "annotations" / "instances_test.json").write_text('{"images": [1, 2')
    code, out, err = parse(str(tmp_path), "--out", str(tmp_path / "p.json"))
    assert code == 0 and "instances_test.json: not valid JSON" in err and len(err.strip().splitlines()) == 1
    assert json.loads((tmp_path / "p.json").read_text())["summary"]["files_skipped"] == 1
    (tmp_path / "annotations" / "instances_train.json").write_text('{"images": {}, "annotations": [], "categories": []}')
    code, out, err = parse(str(tmp_path), "--out", str(tmp_path / "p.json"))
    assert code == 1 and "'images' must be a list" in err and "Traceback" not in err


def test_detection_rule_and_forcing(tmp_path, synth_data):
    with pytest.raises(DataError, match="no VOC layout.*no COCO file.*no YOLO layout"):
        detect_format(tmp_path)
    mixed = tmp_path / "mixed"
    os.symlink(synth_data / "Annotations", mixed / "Annotations") if mixed.mkdir() is None else None
    os.symlink(synth_data / "JPEGImages", mixed / "JPEGImages")
    coco_file(mixed / "annotations" / "instances_train.json", [], [])
    with pytest.raises(DataError, match="looks like voc and coco.*--format"):
        detect_format(mixed)
    assert len(parse_dataset(mixed, format="voc").images) == 12
    code, _, err = parse(str(mixed), "--out", str(tmp_path / "p.json"), "--format", "voc")
    assert code == 0, err
    text = tmp_path / "notes.txt"
    text.write_text("not a dataset\n")
    code, _, err = parse(str(text), "--out", str(tmp_path / "p.json"))
    assert code == 1 and "notes.txt is a file" in err
    assert FORMATS == rcnn.cli.FORMATS


def test_split_rule_is_one_for_all_formats():
    assert [split_name(n) for n in ("train2017", "trainval", "val2017", "valid", "test-dev", "test", "default")] == \
        ["train", "train", "val", "val", "test", "test", None]
    assert assign_splits({"train": ["a", "b"], "val": ["c"]}) == {"a": "train", "b": "train", "c": "test"}
    assert assign_splits({"train": ["a"], "val": ["b"], "test": ["c"]}) == {"a": "train", "b": "train", "c": "test"}
    # VOC 2012: trainval = train + val, no test: val is the test split
    assert assign_splits({"train": ["a"], "trainval": ["a", "b"], "val": ["b"]}) == {"a": "train", "b": "test"}


def test_coco_2017_layout_split_folders_and_options_that_do_not_fit(tmp_path):
    write_image(tmp_path / "val2017" / "000001.png")
    write_image(tmp_path / "train2017" / "000002.png")
    for split, k in (("val2017", 1), ("train2017", 2)):
        coco_file(tmp_path / "annotations" / f"instances_{split}.json", [{"id": k, "file_name": f"{k:06d}.png"}],
                  [{"id": 1, "image_id": k, "category_id": 7, "bbox": [1, 2, 30, 20]}])
    ds = parse_dataset(tmp_path)
    assert [(a.id, a.split, a.path) for a in ds.images] == [
        ("000001", "test", str((tmp_path / "val2017" / "000001.png").resolve())),
        ("000002", "train", str((tmp_path / "train2017" / "000002.png").resolve()))]
    with pytest.raises(ValueError, match="--annotations is for VOC"):
        parse_dataset(tmp_path, annotations_dir=tmp_path / "annotations", format="coco")
    code, _, err = parse(str(tmp_path), "--out", str(tmp_path / "p.json"), "--format", "yolo", "--images", str(tmp_path))
    assert code == 2 and "--images" in err


def test_formats_are_peers_over_public_helpers():
    """Each format is a module of rcnn/formats over rcnn.records, rcnn.safe_read and rcnn.formats.common: no reader
    imports rcnn.parse (which imports the readers) or a private name of another module."""
    import ast

    import rcnn.formats

    folder = Path(rcnn.formats.__file__).parent
    assert {"voc.py", "coco.py", "yolo.py", "common.py"} <= {p.name for p in folder.glob("*.py")}
    for path in sorted(folder.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                module = "." * node.level + (node.module or "")
                assert module not in ("..parse", "rcnn.parse"), f"{path.name} imports {module}"
                private = [a.name for a in node.names if a.name.startswith("_") and a.name != "__future__"]
                assert module == "__future__" or not private, f"{path.name} imports {private} from {module}"
            elif isinstance(node, ast.Import):
                assert all(a.name != "rcnn.parse" for a in node.names), path.name
