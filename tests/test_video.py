"""`rcnn detect` on videos, and the outputs other tools read: YOLO labels, crops, a class filter."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from rcnn.cli import main
from rcnn.detect import DetectConfig, Detection, ImageResult, crop_detections, detect_image, yolo_labels
from rcnn.io import load_rgb
from rcnn.model import load_model

FAST = ("--max-side", "100", "--device", "cpu")  # small selective search: seconds, not minutes
FPS = 5.0


def write_video(path: Path, frames: list[np.ndarray], fps: float = FPS) -> Path:
    """An mp4v video of RGB frames, written with OpenCV (the frames are resized to the first one's size)."""
    h, w = frames[0].shape[:2]
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    assert out.isOpened()
    for f in frames:
        out.write(cv2.cvtColor(cv2.resize(f, (w, h)), cv2.COLOR_RGB2BGR))
    out.release()
    return path


def read_frames(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    return frames


@pytest.fixture(scope="module")
def clip(synth_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    images = [load_rgb(p) for p in sorted((synth_data / "JPEGImages").glob("*.jpg"))[:3]]
    return write_video(tmp_path_factory.mktemp("video") / "clip.mp4", [images[i % 3] for i in range(7)])


def test_a_video_comes_back_with_every_frame(fast_model: Path, clip: Path, tmp_path: Path):
    run = tmp_path / "run"
    res = CliRunner().invoke(main, ["detect", str(fast_model), str(clip), "--out", str(run), "--vid-stride", "2",
                                    "--threshold", "0.01", "--save-txt", *FAST])
    assert res.exit_code == 0, res.output
    assert "clip.mp4: 7 frames, 4 scored" in res.output
    inputs = read_frames(clip)
    out = read_frames(run / "clip.mp4")
    assert len(inputs) == len(out) == 7 and out[0].shape == inputs[0].shape
    summary = json.loads((run / "summary.json").read_text())
    assert summary["videos"][0] | {"seconds": 0} == {"video": str(clip.resolve()), "output": "clip.mp4", "frames": 7,
                                                     "scored": 4, "vid_stride": 2, "fps": FPS, "seconds": 0}
    assert [p["frame"] for p in summary["per_image"]] == [0, 2, 4, 6]
    dets = json.loads((run / "detections.json").read_text())
    assert dets and {d["frame"] for d in dets} <= {0, 2, 4, 6}
    assert all(d["time"] == pytest.approx(d["frame"] / FPS) and d["file_name"] == str(clip.resolve()) for d in dets)
    assert sorted(p.name for p in (run / "labels").glob("*.txt")) == [f"clip_{i}.txt" for i in (0, 2, 4, 6)]
    # frame 4 scored by hand, as an image, gives that frame's records
    model = load_model(fast_model, "cpu")
    config = DetectConfig(threshold=0.01, propose=replace(model.config.propose, max_side=100))
    ref, _, _ = detect_image(model, inputs[4], config)
    got = [d for d in dets if d["frame"] == 4]
    assert [d["score"] for d in got] == [d.score for d in ref]
    np.testing.assert_allclose([d["bbox"][:2] for d in got], [d.box[:2] for d in ref], atol=0.01)
    csv = (run / "detections.csv").read_text().splitlines()
    assert csv[0] == "image,label,score,x1,y1,x2,y2,frame,time" and csv[1].split(",")[-2] in {"0", "2", "4", "6"}


def test_frames_between_scored_ones_carry_the_latest_boxes(synth_model: Path, tmp_path: Path, monkeypatch):
    """--vid-stride 2: frames 0, 2, 4 are scored; 1, 3, 5 are written with the boxes of 0, 2, 4."""
    calls = []

    def fake_detect_image(model, image, config, proposals=None):
        x = 10 + 50 * len(calls)  # a box that moves 50 px at every scored frame
        calls.append(x)
        return [Detection("disc", 0.9, [float(x), 20.0, x + 30.0, 70.0])], {"propose": 0, "score": 0, "total": 0}, 1

    monkeypatch.setattr("rcnn.detect.detect_image", fake_detect_image)
    clip = write_video(tmp_path / "grey.avi", [np.full((96, 192, 3), 128, np.uint8)] * 6)
    res = CliRunner().invoke(main, ["detect", str(synth_model), str(clip), "--out", str(tmp_path / "run"), "--vid-stride", "2"])
    assert res.exit_code == 0, res.output
    assert calls == [10, 60, 110]
    out = read_frames(tmp_path / "run" / "grey.mp4")
    assert len(out) == 6

    def drawn_at(frame: np.ndarray) -> list[int]:  # which candidate box's left edge is drawn (rows 35-60)
        return [x for x in calls if np.abs(frame[35:60, x : x + 2].astype(int) - 128).mean() > 30]

    assert [drawn_at(f) for f in out] == [[10], [10], [60], [60], [110], [110]]


@pytest.mark.parametrize("content", [b"", b"not a video at all" * 100, b"\x00\x00\x00\x18ftypmp42" + bytes(500)])
def test_a_file_that_is_not_a_video_is_one_line(synth_model: Path, tmp_path: Path, content: bytes):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(content)
    res = CliRunner().invoke(main, ["detect", str(synth_model), str(bad), "--out", str(tmp_path / "run"), *FAST])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 2  # the skipped input, then the run's one-line error
    assert f"cannot read video {bad}" in res.output or f"video {bad} has no readable frames" in res.output
    assert bad.read_bytes() == content and not (tmp_path / "run" / "bad.mp4").exists()


def test_a_missing_camera_is_one_line(synth_model: Path, tmp_path: Path):
    res = CliRunner().invoke(main, ["detect", str(synth_model), "--source", "57", "--out", str(tmp_path / "run"), *FAST])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "cannot open camera 57" in res.output


def test_yolo_labels_are_normalised_centres_and_sizes():
    r = ImageResult("a.jpg", 200, 100, [Detection("dog", 0.75, [20.0, 10.0, 60.0, 90.0]), Detection("cat", 0.5, [0, 0, 200, 100])])
    assert yolo_labels(r, ["background", "cat", "dog"]) == "1 0.200000 0.500000 0.200000 0.800000\n0 0.500000 0.500000 1.000000 1.000000\n"
    assert yolo_labels(r, ["background", "cat", "dog"], conf=True).splitlines()[0].endswith(" 0.75000")
    assert yolo_labels(ImageResult("b.jpg", 10, 10), ["background", "cat"]) == ""  # an image without detections: an empty file


def test_crops_are_the_boxes_pixels():
    image = np.arange(40 * 50 * 3, dtype=np.uint8).reshape(40, 50, 3)
    a, b = crop_detections(image, [Detection("x", 1.0, [10.2, 5.7, 20.5, 30.0]), Detection("x", 1.0, [49.6, 39.5, 50.0, 40.0])])
    assert np.array_equal(a, image[5:30, 10:21])
    assert b.shape == (1, 1, 3)  # a sliver at the corner still gives a pixel


def parse_yolo(path: Path, width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(0-based class ids, boxes x1 y1 x2 y2 in pixels, scores) of a YOLO label file with scores."""
    rows = np.loadtxt(path, ndmin=2)
    cx, cy, w, h = rows[:, 1] * width, rows[:, 2] * height, rows[:, 3] * width, rows[:, 4] * height
    return rows[:, 0].astype(int), np.column_stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]), rows[:, 5]


def test_yolo_labels_round_trip_to_the_detections(synth_model: Path, synth_data: Path, tmp_path: Path):
    images = sorted((synth_data / "JPEGImages").glob("*.jpg"))[:2]
    run = tmp_path / "run"
    res = CliRunner().invoke(main, ["detect", str(synth_model), *map(str, images), "--out", str(run), "--save-txt",
                                    "--save-conf", "--save-xml", "--threshold", "0.05", "--detect-proposals", "60", *FAST])
    assert res.exit_code == 0, res.output
    labels = run / "labels"
    assert sorted(p.name for p in labels.iterdir()) == sorted(f"{p.stem}{e}" for p in images for e in (".txt", ".xml"))
    dets = json.loads((run / "detections.json").read_text())
    assert dets
    for image in images:
        mine = [d for d in dets if d["file_name"] == str(image.resolve())]
        h, w = load_rgb(image).shape[:2]
        if not mine:
            assert (labels / f"{image.stem}.txt").read_text() == ""
            continue
        ids, boxes, scores = parse_yolo(labels / f"{image.stem}.txt", w, h)
        np.testing.assert_array_equal(ids, [d["category_id"] - 1 for d in mine])
        xywh = np.array([d["bbox"] for d in mine])
        np.testing.assert_allclose(boxes, np.column_stack([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]]), atol=0.02)
        np.testing.assert_allclose(scores, [d["score"] for d in mine], atol=1e-5)


def test_classes_keeps_only_those_and_unknown_names_list_the_models(synth_model: Path, synth_data: Path, tmp_path: Path):
    image = str(sorted((synth_data / "JPEGImages").glob("*.jpg"))[1])
    args = ["detect", str(synth_model), image, "--threshold", "0.05", "--detect-proposals", "60", "--no-images", *FAST]
    res = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "all")])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "sq"), "--classes", "square", "--save-crop"])
    assert res.exit_code == 0, res.output
    every = json.loads((tmp_path / "all" / "detections.json").read_text())
    squares = json.loads((tmp_path / "sq" / "detections.json").read_text())
    assert len(every) < 100  # below max_detections, so class-wise NMS keeps the same squares either way
    assert squares == [d for d in every if d["category"] == "square"]
    crops = sorted((tmp_path / "sq" / "crops").rglob("*.jpg"))
    assert [p.parent.name for p in crops] == ["square"] * len(squares)
    if squares:
        k = 1 + max(range(len(squares)), key=lambda i: squares[i]["score"])
        crop = load_rgb(tmp_path / "sq" / "crops" / "square" / f"{Path(image).stem}_{k}.jpg")
        x, y, bw, bh = squares[k - 1]["bbox"]
        assert abs(crop.shape[1] - bw) <= 2 and abs(crop.shape[0] - bh) <= 2
    res = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "x"), "--classes", "square,dog"])
    assert res.exit_code == 2 and "'--classes dog'" in res.output and "its classes are disc, square" in res.output
