"""`rcnn export --format onnx`: both kinds of network, checked with onnxruntime against PyTorch on real crops."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from rcnn.cli import main
from rcnn.crop import warp_regions
from rcnn.detect import DetectConfig, detect_image
from rcnn.io import load_rgb
from rcnn.model import load_model, preprocess
from rcnn.propose import selective_search

ort = pytest.importorskip("onnxruntime")


def synth_images(synth_data: Path, n: int = 2) -> list[np.ndarray]:
    return [load_rgb(p) for p in sorted((synth_data / "JPEGImages").glob("*.jpg"))[:n]]


@pytest.fixture(scope="module")
def classic_onnx(synth_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("onnx") / "classic.onnx"
    res = CliRunner().invoke(main, ["export", str(synth_model), "--format", "onnx", "--out", str(out)])
    return out, res.output


@pytest.fixture(scope="module")
def fast_onnx(fast_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("onnx") / "fast.onnx"
    res = CliRunner().invoke(main, ["export", str(fast_model), "--format", "onnx", "--out", str(out)])
    return out, res.output


def reported_diff(output: str) -> float:
    return float(output.split("max |score difference| ")[1].split(",")[0])


def test_classic_export_scores_real_crops_like_pytorch(classic_onnx, synth_model: Path, synth_data: Path):
    path, output = classic_onnx
    assert path.is_file() and "rcnn network" in output and reported_diff(output) <= 1e-4
    model = load_model(synth_model, "cpu")
    sess = ort.InferenceSession(str(path))
    assert [i.name for i in sess.get_inputs()] == ["crops"] and sess.get_inputs()[0].shape[0] == "batch"
    for image, n in zip(synth_images(synth_data), (7, 3)):  # two batch sizes: the batch is dynamic
        boxes = selective_search(image, model.config.propose)[:n]
        crop, size = model.config.crop, model.input_size
        crops = warp_regions(image, boxes, size, int(round(crop.context * size / crop.size)))
        ref_scores, ref_deltas = model.predict(crops, batch_size=n)
        scores, deltas = sess.run(None, {"crops": preprocess(crops, model.mean, model.std, size).contiguous().numpy()})
        assert scores.shape == (n, 3) and deltas.shape == (n, 3, 4)
        assert np.abs(scores - ref_scores).max() <= 1e-4
        assert np.abs(deltas - ref_deltas).max() <= 1e-4


def test_fast_export_scores_regions_like_pytorch_at_any_size(fast_onnx, fast_model: Path, synth_data: Path):
    path, output = fast_onnx
    assert path.is_file() and "fast network" in output and reported_diff(output) <= 1e-4
    model = load_model(fast_model, "cpu")
    sess = ort.InferenceSession(str(path))
    assert [i.name for i in sess.get_inputs()] == ["image", "rois"]
    image = synth_images(synth_data, 1)[0]
    for img, n in ((image, 40), (np.ascontiguousarray(image[:, : image.shape[1] // 2]), 9)):  # another H x W, another R
        boxes = selective_search(img, model.config.propose)[:n]
        ref_scores, ref_deltas = model.net.predict(img, boxes)
        x, size = model.net.prepare(img)
        scale = np.array([size[1] / img.shape[1], size[0] / img.shape[0]] * 2, np.float32)
        scores, deltas = sess.run(None, {"image": x.numpy(), "rois": (boxes * scale).astype(np.float32)})
        assert scores.shape == (len(boxes), 3)
        assert np.abs(scores - ref_scores).max() <= 1e-4 and np.abs(deltas - ref_deltas).max() <= 1e-4


@pytest.mark.parametrize("which", ["classic", "fast"])
def test_detect_runtime_onnx_gives_the_torch_detections(which: str, synth_model: Path, fast_model: Path, synth_data: Path):
    from rcnn.export import onnx_model

    model = load_model(synth_model if which == "classic" else fast_model, "cpu")
    image = synth_images(synth_data, 2)[1]
    boxes = selective_search(image, model.config.propose)[:60]
    config = DetectConfig(threshold=0.05)
    ref = detect_image(model, image, config, boxes)[0]
    got = detect_image(onnx_model(model), image, config, boxes)[0]
    assert ref and [d.label for d in got] == [d.label for d in ref]
    np.testing.assert_allclose([d.score for d in got], [d.score for d in ref], atol=1e-4)
    np.testing.assert_allclose([d.box for d in got], [d.box for d in ref], atol=0.05)


def test_export_never_writes_over_a_file_it_did_not_write(classic_onnx, synth_model: Path, tmp_path: Path):
    path, _ = classic_onnx
    mine = tmp_path / "mine.onnx"
    mine.write_bytes(b"someone's notes")
    res = CliRunner().invoke(main, ["export", str(synth_model), "--out", str(mine)])
    assert res.exit_code == 1 and "was not written by `rcnn export`" in res.output
    assert mine.read_bytes() == b"someone's notes"
    again = tmp_path / "again.onnx"
    again.write_bytes(path.read_bytes())  # an earlier export is ours: replaced
    res = CliRunner().invoke(main, ["export", str(synth_model), "--out", str(again), "--regions", "8"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["export", str(synth_model), "--out", str(synth_model / "config.json")])
    assert res.exit_code == 1 and "would replace a file of the model folder" in res.output


def test_without_onnx_export_says_how_to_install_it(synth_model: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx raises ImportError
    res = CliRunner().invoke(main, ["export", str(synth_model), "--out", str(tmp_path / "m.onnx")])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert res.output.strip() == ("Error: ONNX support needs the 'onnx' package; install it with "
                                  "`pip install 'rcnn[onnx]'` (or `pip install onnx onnxruntime`)")
    assert not (tmp_path / "m.onnx").exists()


def test_auto_runtime_uses_the_graph_exported_into_the_model_folder(classic_onnx, synth_model: Path, fast_model: Path,
                                                                     synth_data: Path, tmp_path: Path):
    import json
    import shutil

    image = str(sorted((synth_data / "JPEGImages").glob("*.jpg"))[1])
    classic, fast = tmp_path / "classic", tmp_path / "fast"
    shutil.copytree(synth_model, classic)
    shutil.copytree(fast_model, fast)

    def run(model: Path, name: str, *extra: str) -> tuple[str, list]:
        out = tmp_path / name
        res = CliRunner().invoke(main, ["detect", str(model), image, "--out", str(out), "--no-images", "--device", "cpu",
                                        "--max-side", "100", "--detect-proposals", "60", "--threshold", "0.05", *extra])
        assert res.exit_code == 0, res.output
        return json.loads((out / "summary.json").read_text())["config"]["runtime"], json.loads((out / "detections.json").read_text())

    runtime, ref = run(classic, "plain")
    assert runtime == "torch"  # no graph in the folder
    shutil.copyfile(classic_onnx[0], classic / "model.onnx")  # what `rcnn export MODEL` leaves there
    runtime, got = run(classic, "cached")
    assert runtime == "onnx" and [d["category"] for d in got] == [d["category"] for d in ref]
    np.testing.assert_allclose([d["score"] for d in got], [d["score"] for d in ref], atol=1e-4)
    assert run(classic, "forced", "--runtime", "torch")[0] == "torch"
    shutil.copyfile(classic_onnx[0], fast / "model.onnx")  # a graph of another model is never used
    assert run(fast, "other")[0] == "torch"
    (fast / "model.onnx").write_bytes(b"junk")
    assert run(fast, "junk")[0] == "torch"


def test_a_stored_graph_is_bound_to_its_model_by_its_scores(classic_onnx, fast_onnx, synth_model: Path, fast_model: Path):
    """The metadata of a graph can be copied; the load check runs the graph itself against the model's weights."""
    import onnx
    from onnx import numpy_helper

    from rcnn.export import reproduces, session

    classic, fast = load_model(synth_model, "cpu"), load_model(fast_model, "cpu")
    assert reproduces(classic, session(classic_onnx[0])) and reproduces(fast, session(fast_onnx[0]))
    assert not reproduces(classic, session(fast_onnx[0]))  # another network's inputs
    proto = onnx.load(str(classic_onnx[0]))
    for init in proto.graph.initializer:  # the same network with other weights
        arr = numpy_helper.to_array(init)
        if arr.dtype == np.float32 and arr.ndim >= 2:
            init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(arr[..., ::-1]) * 0.5, init.name))
    assert not reproduces(classic, session(proto.SerializeToString()))
