"""Issue 25, at the library level: the one rule for names that become paths (rcnn.records), the links a writer
refuses (rcnn.io.output_subdir), the plan names `detect --merge` trusts, frame output names and VOC split lines."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from rcnn.errors import DataError
from rcnn.formats.voc import read_split_files
from rcnn.io import output_subdir
from rcnn.records import check_name, escaping_name, safe_child
from rcnn.sources import output_names


@pytest.mark.parametrize("name", ["../x", "a/../../x", "/etc/passwd", "..", "a\0b", "a/.."])
def test_names_that_leave_their_folder_are_refused_naming_the_whole_value(name: str, tmp_path: Path):
    assert escaping_name(name)
    with pytest.raises(DataError) as e:
        safe_child(tmp_path, name, ".npy", "image id")
    assert repr(name) in str(e.value) and "image id" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["a photo", "фото 写真", "..x", "x..", "a\\..\\b", "sub/a", ".hidden", "-rf"])
def test_names_that_stay_inside_are_kept(name: str, tmp_path: Path):
    assert not escaping_name(name) and check_name(name, "id") == name
    path = safe_child(tmp_path, name, ".npy")
    assert path == tmp_path / f"{name}.npy"
    assert os.path.realpath(path).startswith(str(tmp_path.resolve()) + os.sep)


def test_safe_child_follows_no_link_out_of_its_folder(tmp_path: Path):
    out, victim = tmp_path / "out", tmp_path / "victim"
    out.mkdir()
    victim.mkdir()
    (out / "sub").symlink_to(victim)
    with pytest.raises(DataError, match="link"):
        safe_child(out, "sub/a", ".npy")
    with pytest.raises(DataError, match="link"):
        safe_child(out / "sub", "a", ".npy")


def test_output_subdir_refuses_a_link_and_a_file(tmp_path: Path):
    (tmp_path / "victim").mkdir()
    (tmp_path / "boxes").symlink_to(tmp_path / "victim")
    with pytest.raises(DataError, match="boxes is a link"):
        output_subdir(tmp_path, "boxes")
    (tmp_path / "images").write_text("x")
    with pytest.raises(DataError, match="images is a file"):
        output_subdir(tmp_path, "images")
    assert output_subdir(tmp_path, "shards").is_dir() and output_subdir(tmp_path, "shards").is_dir()  # a re-run takes it back


def test_a_parsed_file_with_an_escaping_id_or_class_is_refused_on_load(synth_parsed: Path, tmp_path: Path):
    from rcnn.records import Dataset

    for edit, token in ((lambda d: d["images"][0].update(id="../../pwn_id"), "../../pwn_id"),
                        (lambda d: d["classes"].append("/abs/pwn_class"), "/abs/pwn_class")):
        d = json.loads(synth_parsed.read_text())
        edit(d)
        (tmp_path / "p.json").write_text(json.dumps(d))
        with pytest.raises(DataError, match=token):
            Dataset.load(tmp_path / "p.json")


@pytest.mark.parametrize("paths,streams,expected", [
    (["clip_0.jpg", "clip.mp4"], 0, ["clip_0", "clip_2"]),
    (["clip.mp4", "clip_0.jpg"], 0, ["clip_2", "clip_0"]),
    (["clip.mp4", "clip_x.jpg", "clip_0a.png"], 0, ["clip", "clip_x", "clip_0a"]),  # no frame can be named so
    (["a/x.jpg", "b/x.jpg", "x.mp4"], 0, ["x", "x_2", "x_3"]),
    (["camera0_1.jpg", "camera0"], 1, ["camera0_1", "camera0_2"]),
    (["a.jpg", "b.png", "a.png"], 0, ["a", "b", "a_2"]),
])
def test_frame_names_never_take_an_image_name(paths: list[str], streams: int, expected: list[str]):
    names = output_names([Path(p) for p in paths], streams)
    assert names == expected
    frames = {f"{n}_{k}" for n, p, s in zip(names, paths, range(len(paths))) if p.endswith(".mp4") or s >= len(paths) - streams
              for k in range(100)}
    images = {n for n, p, s in zip(names, paths, range(len(paths))) if not (p.endswith(".mp4") or s >= len(paths) - streams)}
    assert not frames & images


def test_voc_split_lines_are_whole_ids_when_an_annotation_has_that_id(tmp_path: Path):
    main = tmp_path / "ImageSets" / "Main"
    main.mkdir(parents=True)
    (main / "train.txt").write_text("a photo\nplain\nflagged one  1\n")
    (main / "test.txt").write_text("b\r\nother word\n")
    splits = read_split_files(tmp_path, frozenset({"a photo", "plain", "flagged one", "b"}))
    assert splits == {"a photo": "train", "plain": "train", "flagged one": "train", "b": "test", "other": "test"}
    assert read_split_files(tmp_path) == {"a": "train", "plain": "train", "flagged": "train", "b": "test", "other": "test"}


def test_merge_refuses_a_plan_name_that_is_not_a_plain_file_name(tmp_path: Path):
    from rcnn.runs import RunPlan

    plan = RunPlan("k", None, ["/x/a.jpg", "/x/b.jpg"], ["a", "b"], {}, True, False, False, False, False, None,
                   ["background", "disc"], "alexnet")
    (tmp_path / "parts").mkdir()
    plan.save(tmp_path, replace_other=True)
    assert RunPlan.load(tmp_path).names == ["a", "b"]
    for names, token in ((["../../pwn", "b"], "../../pwn"), (["a", "/abs/pwn"], "/abs/pwn"), (["a", ".."], "'..'"),
                         (["a", "a"], "duplicates"), (["a"], "one output name per input")):
        d = json.loads((tmp_path / "parts" / "plan.json").read_text())
        d["names"] = names
        (tmp_path / "parts" / "plan.json").write_text(json.dumps(d))
        with pytest.raises(DataError, match=token.replace(".", r"\.").replace("/", "/")):
            RunPlan.load(tmp_path)
