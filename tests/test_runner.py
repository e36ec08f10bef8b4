"""The per-image runner (rcnn.runner) and the detection records it passes (rcnn.runs.Part), against plain oracles."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from rcnn.errors import DataError
from rcnn.results import Detection, ImageResult
from rcnn.runner import Outcome, Stage
from rcnn.runs import Part, read_part, write_part
from rcnn.scale import shard_of
from rcnn.sources import Source, VideoStream, load_sources


def _square(shared: int, item: int) -> Outcome[int]:  # module level: a process pool pickles it by name
    return Outcome(item * item + shared) if item >= 0 else Outcome(None, f"negative {item}")


class Store:
    """A stage's stored results in a dict: valid while the stored value is the item's."""

    def __init__(self, stored: dict[int, int] | None = None) -> None:
        self.stored = dict(stored or {})
        self.errors: list[str] = []

    def stage(self) -> Stage[int]:
        return Stage("test", _square, self.collect, lambda item, e: self.errors.append(e), lambda i: i in self.stored)

    def collect(self, item: int, result: Outcome[int]) -> None:
        if result.value is None:
            self.errors.append(result.error)
        else:
            self.stored[item] = result.value


@pytest.mark.parametrize("workers", [1, 2])
def test_a_stage_computes_only_what_is_not_stored_and_collects_every_result(workers: int):
    items = [5, 3, -1, 8, 0, 2]
    store = Store({3: 9, 8: 64})
    todo = store.stage().plan(items)
    assert todo.items == items and todo.reused == [3, 8] and todo.todo == [5, -1, 0, 2]  # input order kept
    store.stage().run(1, todo.todo, done=len(todo.reused), workers=workers, progress=False)
    assert store.stored == {3: 9, 8: 64, 5: 26, 0: 1, 2: 5}  # oracle: x * x + 1, reused ones untouched
    assert store.errors == ["negative -1"]


def test_a_stage_plans_the_items_of_its_shard_only():
    items = [f"img{i}.jpg" for i in (7, 1, 4, 9, 2)]
    store = Store()
    stage = Stage("test", _square, store.collect, lambda item, e: None, lambda s: s.endswith("4.jpg"))
    for k in range(2):
        todo = stage.plan(items, (k, 2))
        assert todo.items == shard_of(items, (k, 2)) and todo.todo + todo.reused != []
        assert sorted(todo.todo + todo.reused) == sorted(todo.items)
        assert all(x.endswith("4.jpg") for x in todo.reused)


def test_a_part_survives_its_json_and_a_foreign_file_is_none(tmp_path: Path):
    r = ImageResult("/x/a.jpg", 64, 48, [Detection("disc", 0.9, [1.0, 2.0, 30.0, 40.0])], {"total": 0.1}, 7, "a")
    part = Part(3, "abc", r, None, "k1")
    write_part(tmp_path, "a", part)
    assert read_part(tmp_path, "a") == part
    assert list(part.to_json()) == ["format", "index", "image_sha1", "result", "error", "key"]  # the file's key order
    (tmp_path / "parts" / "b.json").write_text('{"format": "something else"}')
    (tmp_path / "parts" / "c.json").write_text("not json")
    assert read_part(tmp_path, "b") is None and read_part(tmp_path, "c") is None and read_part(tmp_path, "z") is None


def test_a_video_stream_gives_every_frame_with_its_index_and_time(tmp_path: Path):
    path = tmp_path / "v.avi"
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 4.0, (32, 24))
    for v in (0, 80, 160, 240):
        out.write(np.full((24, 32, 3), v, np.uint8))
    out.release()
    with VideoStream(path) as video:
        frames = list(video.frames())
        assert video.fps == 4.0
    assert [f.index for f in frames] == [0, 1, 2, 3] and [f.time for f in frames] == [0.0, 0.25, 0.5, 0.75]
    assert [int(f.rgb.mean() + 0.5) for f in frames] == pytest.approx([0, 80, 160, 240], abs=3)
    with VideoStream(path) as video:
        assert len(list(video.frames(limit=2))) == 2
    with pytest.raises(DataError, match="video not found"):
        VideoStream(tmp_path / "missing.mp4")


def test_sources_are_named_distinctly_and_a_camera_comes_last():
    sources = load_sources([Path("a/x.jpg"), Path("b/x.png"), Path("c/clip.mp4")], 0)
    assert [s.name for s in sources] == ["x", "x_2", "clip", "camera0"]
    assert [s.is_image for s in sources] == [True, True, False, False]
    assert sources[3] == Source(0, "camera0") and sources[3].label == "camera 0"
