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


# --------------------------------------------------------------------------- issue 9: one clear line for every bad input


def cli_parse(root: Path, out: Path, *args: str):
    return CliRunner().invoke(main, ["parse", str(root), "--out", str(out), *args])


def assert_clean(res) -> None:
    """No traceback, no usage error and no 'unexpected error' for bad input."""
    assert "Traceback" not in res.output
    assert "Usage:" not in res.output
    assert "unexpected error" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)


def call_with_timeout(fn, fifos: list[Path], timeout: float = 30.0):
    """Run ``fn()`` in a thread; if it blocks (opening a FIFO), unblock it and fail instead of hanging."""
    import os
    import threading

    result: dict = {}

    def target():
        try:
            result["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the test thread
            result["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        for fifo in fifos:  # a writer that opens and closes releases a reader blocked in open()
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
        thread.join(5)
        pytest.fail(f"parse blocked on a FIFO for {timeout}s")
    if "error" in result:
        raise result["error"]
    return result["value"]


needs_fifo = pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="no FIFOs on this platform")


@needs_fifo
def test_fifo_and_folder_named_xml_are_skipped_not_opened(tmp_path):
    import os

    root = make_voc(tmp_path / "d", {"good": voc_xml("good.png", [("cat", 2, 2, 20, 20)])})
    fifo = root / "Annotations" / "pipe.xml"
    os.mkfifo(fifo)
    (root / "Annotations" / "folder.xml").mkdir()
    ds = call_with_timeout(lambda: parse_dataset(root), [fifo])
    assert [a.id for a in ds.images] == ["good"]
    skipped = {Path(p.file).name: p for p in ds.problems if "not a regular file; skipped" in p.message}
    assert set(skipped) == {"pipe.xml", "folder.xml"}
    assert all(p.level == "warning" for p in skipped.values())
    assert "FIFO" in skipped["pipe.xml"].message and "directory" in skipped["folder.xml"].message
    # directly, too
    ann, probs = call_with_timeout(lambda: parse_annotation(fifo, root / "JPEGImages"), [fifo])
    assert ann is None and "not a regular file" in probs[0].message

    out = tmp_path / "p.json"
    res = call_with_timeout(lambda: cli_parse(root, out), [fifo])
    assert res.exit_code == 0, res.output
    assert_clean(res)
    lines = [ln for ln in res.output.splitlines() if "pipe.xml" in ln]
    assert len(lines) == 1 and "not a regular file; skipped" in lines[0]
    assert [im["id"] for im in json.loads(out.read_text())["images"]] == ["good"]


@needs_fifo
def test_image_that_is_a_fifo_is_an_error_not_a_hang(tmp_path):
    import os

    root = make_voc(tmp_path / "d", {"good": voc_xml("good.png", []), "b": voc_xml("b.png", [])}, {"good": "RGB"})
    fifo = root / "JPEGImages" / "b.png"
    os.mkfifo(fifo)
    ann, probs = call_with_timeout(lambda: parse_annotation(root / "Annotations" / "b.xml", root / "JPEGImages"), [fifo])
    assert ann is None and probs[0].level == "error"
    assert "b.png" in probs[0].message and "not a regular file" in probs[0].message
    res = call_with_timeout(lambda: cli_parse(root, tmp_path / "p.json"), [fifo])
    assert res.exit_code == 0, res.output
    assert_clean(res)
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "b.xml" in errors[0] and "b.png" in errors[0] and "not a regular file" in errors[0]


@pytest.mark.parametrize("value", ["inf", "1e400", "nan", "-inf", "-5", "1e300", "abc"])
def test_bad_size_value_is_a_warning_naming_it(tmp_path, value):
    xml = voc_xml("a.png", [("cat", 2, 2, 20, 20)]).replace("<width>64</width>", f"<width>{value}</width>")
    ann, probs = one(tmp_path, xml)
    assert ann is not None and (ann.width, ann.height) == (64, 48) and len(ann.objects) == 1
    assert len(probs) == 1 and probs[0].level == "warning" and "a.xml" in probs[0].file
    assert "<width>" in probs[0].message and repr(value) in probs[0].message


@pytest.mark.parametrize("value", ["inf", "1e400", "nan"])
def test_cli_bad_size_value_goes_on(tmp_path, value):
    root = make_voc(tmp_path / "d", {
        "a": voc_xml("a.png", [("cat", 2, 2, 20, 20)]).replace("<height>48</height>", f"<height>{value}</height>"),
        "b": voc_xml("b.png", [("cat", 2, 2, 20, 20)]),
    })
    out = tmp_path / "p.json"
    res = cli_parse(root, out)
    assert res.exit_code == 0, res.output
    assert_clean(res)
    lines = [ln for ln in res.output.splitlines() if ln.startswith("warning:")]
    assert len(lines) == 1 and "a.xml" in lines[0] and f"'{value}'" in lines[0]
    assert sorted(im["id"] for im in json.loads(out.read_text())["images"]) == ["a", "b"]


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e400", "-1e400"])
@pytest.mark.parametrize("field", [1, 4])
def test_non_finite_box_value_skips_the_object_naming_the_value(tmp_path, value, field):
    box = [2, 2, 20, 20]
    box[field - 1] = value
    ann, probs = one(tmp_path, voc_xml("a.png", [("cat", *box), ("dog", 2, 2, 20, 20)]))
    assert [o.label for o in ann.objects] == ["dog"]
    assert len(probs) == 1 and probs[0].level == "warning" and "object 0 (cat)" in probs[0].message
    assert repr(value) in probs[0].message and ("<xmin>" if field == 1 else "<ymax>") in probs[0].message


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400", "yes"])
def test_bad_difficult_flag_is_a_warning_and_false(tmp_path, value):
    ann, probs = one(tmp_path, voc_xml("a.png", [("cat", 2, 2, 20, 20, value)]))
    assert ann.objects[0].difficult is False
    assert len(probs) == 1 and "<difficult>" in probs[0].message and repr(value) in probs[0].message


def test_difficult_zero_is_false_without_warning(tmp_path):
    ann, probs = one(tmp_path, voc_xml("a.png", [("cat", 2, 2, 20, 20, "0"), ("dog", 2, 2, 20, 20, "1.0")]))
    assert [o.difficult for o in ann.objects] == [False, True] and probs == []


def _make_undecodable_name(folder: Path, xml: str) -> bytes:
    import os
    import sys

    if sys.getfilesystemencoding().lower().replace("-", "") != "utf8":
        pytest.skip("file system encoding is not UTF-8")
    path = os.fsencode(folder) + b"/bad\xff.xml"
    try:
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
    except OSError:
        pytest.skip("this file system refuses non-UTF-8 file names")
    os.write(fd, xml.encode())
    os.close(fd)
    return path


def test_undecodable_xml_file_name_is_skipped_with_readable_message(tmp_path):
    root = make_voc(tmp_path / "d", {"a": voc_xml("a.png", [("cat", 2, 2, 20, 20)])})
    _make_undecodable_name(root / "Annotations", voc_xml("a.png", [("cat", 2, 2, 20, 20)]))
    ds = parse_dataset(root)
    assert [a.id for a in ds.images] == ["a"]
    [p] = [p for p in ds.problems if "bad" in p.file]
    assert p.file.endswith("bad\ufffd.xml") and p.level == "error" and "not valid UTF-8" in p.message
    p.file.encode("utf-8")  # printable

    out = tmp_path / "p.json"
    res = cli_parse(root, out)
    assert res.exit_code == 0, res.output
    assert_clean(res)
    lines = [ln for ln in res.output.splitlines() if "bad" in ln]
    assert len(lines) == 1 and "bad\ufffd.xml" in lines[0] and lines[0].startswith("error:")
    text = out.read_bytes().decode("utf-8")  # valid UTF-8
    assert "\\udc" not in text.lower()
    data = json.loads(text)
    assert [im["id"] for im in data["images"]] == ["a"]
    assert any(p["file"].endswith("bad\ufffd.xml") for p in data["problems"])


def _with_split_file(tmp_path: Path) -> tuple[Path, Path]:
    root = make_voc(tmp_path / "d", {"a": voc_xml("a.png", [("cat", 2, 2, 20, 20)])})
    (root / "ImageSets" / "Main").mkdir(parents=True)
    return root, root / "ImageSets" / "Main" / "train.txt"


def test_non_utf8_split_file_is_one_data_error(tmp_path):
    root, split = _with_split_file(tmp_path)
    split.write_bytes(b"a\n\xff\xfe\n")
    with pytest.raises(DataError, match=r"ImageSets/Main/train.txt is not UTF-8 text"):
        parse_dataset(root)
    res = cli_parse(root, tmp_path / "p.json")
    assert res.exit_code == 1, res.output
    assert_clean(res)
    assert "ImageSets/Main/train.txt is not UTF-8 text" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_split_file_with_bom_and_crlf_is_read(tmp_path):
    root, split = _with_split_file(tmp_path)
    split.write_bytes(b"\xef\xbb\xbfa\r\n")
    ds = parse_dataset(root)
    assert [(a.id, a.split) for a in ds.images] == [("a", "train")]


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_split_file_that_is_not_a_file_is_one_data_error(tmp_path, kind):
    import os

    root, split = _with_split_file(tmp_path)
    if kind == "directory":
        split.mkdir()
    elif not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    else:
        os.mkfifo(split)
    with pytest.raises(DataError, match=r"ImageSets/Main/train.txt.*not a regular file"):
        call_with_timeout(lambda: parse_dataset(root), [split])
    res = call_with_timeout(lambda: cli_parse(root, tmp_path / "p.json"), [split])
    assert res.exit_code == 1, res.output
    assert_clean(res)
    assert "train.txt" in res.output and "not a regular file" in res.output


def _deny(monkeypatch, target: Path, name: str = "open") -> None:
    """Make os.<name> raise PermissionError for ``target`` (what chmod 000 does for a normal user)."""
    import errno
    import os

    real = getattr(os, name)

    def fake(path, *args, **kwargs):
        if os.fspath(path) == os.fspath(target):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, name, fake)


def test_unreadable_split_file_is_one_data_error(tmp_path, monkeypatch):
    root, split = _with_split_file(tmp_path)
    split.write_text("a\n")
    _deny(monkeypatch, split)
    with pytest.raises(DataError, match=r"cannot read split file .*ImageSets/Main/train.txt: Permission denied"):
        parse_dataset(root)
    res = cli_parse(root, tmp_path / "p.json")
    assert res.exit_code == 1 and "train.txt: Permission denied" in res.output
    assert_clean(res)


def test_unreadable_xml_and_image_are_per_file_errors(tmp_path, monkeypatch):
    root = make_voc(tmp_path / "d", {n: voc_xml(f"{n}.png", [("cat", 2, 2, 20, 20)]) for n in ("a", "b", "c")})
    _deny(monkeypatch, root / "Annotations" / "b.xml")
    real_open = __import__("os").open
    _deny(monkeypatch, root / "JPEGImages" / "c.png")
    assert __import__("os").open is not real_open
    ds = parse_dataset(root)
    assert [a.id for a in ds.images] == ["a"]
    errors = {Path(p.file).name: p.message for p in ds.problems if p.level == "error"}
    assert errors["b.xml"] == "cannot read: Permission denied"
    assert "c.png" in errors["c.xml"] and "Permission denied" in errors["c.xml"]
    res = cli_parse(root, tmp_path / "p.json")
    assert res.exit_code == 0, res.output
    assert_clean(res)
    assert len([ln for ln in res.output.splitlines() if ln.startswith("error:")]) == 2


def test_unreadable_annotations_folder_is_one_data_error(tmp_path, monkeypatch):
    root = make_voc(tmp_path / "d", {"a": voc_xml("a.png", [])})
    _deny(monkeypatch, root / "Annotations", "scandir")
    with pytest.raises(DataError, match=r"cannot read folder .*Annotations: Permission denied"):
        parse_dataset(root)
    res = cli_parse(root, tmp_path / "p.json")
    assert res.exit_code == 1 and "Annotations: Permission denied" in res.output
    assert_clean(res)


@pytest.mark.skipif(not hasattr(__import__("os"), "geteuid") or __import__("os").geteuid() == 0,
                    reason="root ignores file permissions")
def test_chmod_000_annotations_folder_and_file(tmp_path):
    import os

    root = make_voc(tmp_path / "d", {"a": voc_xml("a.png", []), "b": voc_xml("b.png", [])})
    os.chmod(root / "Annotations" / "b.xml", 0)
    try:
        ds = parse_dataset(root)
        assert [a.id for a in ds.images] == ["a"]
        assert any("b.xml" in p.file and "Permission denied" in p.message for p in ds.problems)
        os.chmod(root / "Annotations", 0)
        with pytest.raises(DataError, match="Annotations: Permission denied"):
            parse_dataset(root)
        res = cli_parse(root, tmp_path / "p.json")
        assert res.exit_code == 1 and "Permission denied" in res.output
        assert_clean(res)
    finally:
        os.chmod(root / "Annotations", 0o755)
        os.chmod(root / "Annotations" / "b.xml", 0o644)


def test_reserved_names_are_exported():
    from rcnn.parse import RESERVED_CLASSES, is_reserved_class

    assert "background" in RESERVED_CLASSES and "__background__" in RESERVED_CLASSES
    assert all(is_reserved_class(n) for n in ("background", "Background", "BACKGROUND", "__background__", " _Background_ "))
    assert not any(is_reserved_class(n) for n in ("backgrounds", "cat", "bg", "back ground"))


@pytest.mark.parametrize("name", ["background", "Background", "__background__", "BACKGROUND"])
def test_background_class_is_refused(tmp_path, name):
    root = make_voc(tmp_path / "d", {
        "a": voc_xml("a.png", [("cat", 2, 2, 20, 20)]),
        "b": voc_xml("b.png", [("cat", 2, 2, 20, 20), (name, 30, 5, 60, 40)]),
        "c": voc_xml("c.png", [(name, 30, 5, 60, 40)]),
    })
    with pytest.raises(DataError, match=rf"class name '{name}' in .*b\.xml is reserved for the implicit background"):
        parse_dataset(root)
    ds = parse_dataset(root, classes=["cat"])  # filtered out: fine
    assert ds.classes == ["cat"]
    res = cli_parse(root, tmp_path / "p.json")
    assert res.exit_code == 1, res.output
    assert_clean(res)
    assert f"class name '{name}'" in res.output and "b.xml" in res.output and "reserved" in res.output
    assert not (tmp_path / "p.json").exists()
    res = cli_parse(root, tmp_path / "p.json", "--classes", "cat")
    assert res.exit_code == 0, res.output


def test_asking_for_the_background_class_is_a_usage_error(tmp_path):
    root = make_voc(tmp_path / "d", {"a": voc_xml("a.png", [("cat", 2, 2, 20, 20)])})
    with pytest.raises(ValueError, match="reserved"):
        parse_dataset(root, classes=["cat", "Background"])
    res = cli_parse(root, tmp_path / "p.json", "--classes", "cat,Background")
    assert res.exit_code == 2 and "'Background'" in res.output and "reserved" in res.output
    assert "Traceback" not in res.output


def _mutate(d: dict, how: str):
    d["images"].sort(key=lambda im: not im["objects"])  # one with objects first
    img = d["images"][0]
    obj = img["objects"][0]
    if how == "list":
        return [d]
    if how == "images_dict":
        d["images"] = {"a": img}
    elif how == "image_list":
        d["images"][0] = [1, 2]
    elif how == "width_string":
        img["width"] = "64"
    elif how == "width_nan":
        img["width"] = float("nan")
    elif how == "height_zero":
        img["height"] = 0
    elif how == "no_id":
        del img["id"]
    elif how == "unknown_field":
        img["colour"] = "red"
    elif how == "split_bad":
        img["split"] = "val"
    elif how == "objects_dict":
        img["objects"] = {"label": "disc"}
    elif how == "object_string":
        img["objects"][0] = "disc"
    elif how == "box_3":
        obj["box"] = [1, 2, 3]
    elif how == "box_string":
        obj["box"] = [1, 2, "3", 4]
    elif how == "box_nan":
        obj["box"] = [1, 2, float("nan"), 4]
    elif how == "box_inverted":
        obj["box"] = [10, 2, 3, 4]
    elif how == "box_none":
        obj["box"] = None
    elif how == "label_number":
        obj["label"] = 3
    elif how == "difficult_string":
        obj["difficult"] = "no"
    elif how == "classes_string":
        d["classes"] = "disc"
    elif how == "classes_numbers":
        d["classes"] = [1, 2]
    elif how == "classes_background":
        d["classes"] = ["background"] + d["classes"]
    elif how == "label_not_in_classes":
        obj["label"] = "zebra"
    elif how == "problems_dict":
        d["problems"] = {"a": 1}
    elif how == "duplicate_id":
        d["images"].append(dict(img))
    return d


MUTATIONS = ["list", "images_dict", "image_list", "width_string", "width_nan", "height_zero", "no_id", "unknown_field",
             "split_bad", "objects_dict", "object_string", "box_3", "box_string", "box_nan", "box_inverted", "box_none",
             "label_number", "difficult_string", "classes_string", "classes_numbers", "classes_background",
             "label_not_in_classes", "problems_dict", "duplicate_id"]


@pytest.mark.parametrize("how", MUTATIONS)
def test_load_malformed_parsed_json_is_one_data_error(tmp_path, synth_parsed, how):
    d = json.loads(synth_parsed.read_text())
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_mutate(d, how)))
    with pytest.raises(DataError) as info:
        Dataset.load(bad)
    assert str(bad) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("how", ["list", "width_string", "box_3", "classes_background"])
def test_cli_malformed_parsed_json_is_one_line(tmp_path, synth_parsed, how):
    d = json.loads(synth_parsed.read_text())
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_mutate(d, how)))
    res = CliRunner().invoke(main, ["propose", str(bad), "--out", str(tmp_path / "props")])
    assert res.exit_code == 1, res.output
    assert_clean(res)
    assert str(bad) in res.output and len(res.output.strip().splitlines()) == 1


@pytest.mark.parametrize("content", [b"", b"{", b"\xff\xfe{}", b"[" * 100_000 + b"]" * 100_000])
def test_load_broken_json_is_one_data_error(tmp_path, content):
    bad = tmp_path / "bad.json"
    bad.write_bytes(content)
    with pytest.raises(DataError, match="bad.json"):
        Dataset.load(bad)


def test_load_folder_or_fifo_is_one_data_error(tmp_path):
    import os

    (tmp_path / "dir.json").mkdir()
    with pytest.raises(DataError, match=r"dir.json: a directory, not a regular file"):
        Dataset.load(tmp_path / "dir.json")
    if hasattr(os, "mkfifo"):
        fifo = tmp_path / "pipe.json"
        os.mkfifo(fifo)
        with pytest.raises(DataError, match=r"pipe.json: a FIFO, not a regular file"):
            call_with_timeout(lambda: Dataset.load(fifo), [fifo])


def test_load_accepts_integer_flags_and_derives_classes(tmp_path, synth_parsed):
    d = json.loads(synth_parsed.read_text())
    d["images"].sort(key=lambda im: not im["objects"])
    d["images"][0]["objects"][0]["difficult"] = 1
    del d["classes"]
    good = tmp_path / "good.json"
    good.write_text(json.dumps(d))
    ds = Dataset.load(good)
    assert ds.images[0].objects[0].difficult is True
    assert ds.classes == sorted({o.label for a in ds.images for o in a.objects})


def test_newline_in_file_name_keeps_messages_on_one_line(tmp_path):
    root = make_voc(tmp_path / "d", {"a": voc_xml("a.png", [("cat", 2, 2, 20, 20)])})
    (root / "Annotations" / "bad\nname.xml").write_text("<annotation>")
    res = cli_parse(root, tmp_path / "p.json")
    assert res.exit_code == 0, res.output
    assert_clean(res)
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "bad\ufffdname.xml" in errors[0] and "broken XML" in errors[0]


def test_old_import_paths_name_the_same_objects():
    """rcnn.parse keeps re-exporting what moved to rcnn.records, rcnn.safe_read and rcnn.formats (the README's
    Python API and older code import them from there), as the same objects: patching one patches the other."""
    import rcnn.parse
    from rcnn import records, safe_read
    from rcnn.formats import common, voc

    for module in (records, safe_read, common, voc):
        for name in rcnn.parse.__all__:
            if hasattr(module, name):
                assert getattr(rcnn.parse, name) is getattr(module, name), (module.__name__, name)
    assert rcnn.parse.Dataset is records.Dataset and rcnn.parse.parse_annotation is voc.parse_annotation
    assert all(hasattr(rcnn.parse, n) for n in rcnn.parse.__all__)
