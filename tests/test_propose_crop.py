from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from rcnn import propose as propose_mod
from rcnn.boxes import decode, encode
from rcnn.cli import main
from rcnn.crop import class_weights, decode_crop, encode_crops, label_regions, load_shard, select_regions, warp_regions
from rcnn.errors import MissingDependencyError
from rcnn.io import load_rgb
from rcnn.parse import Dataset
from rcnn.propose import ProposeConfig, recall, selective_search

# ----------------------------------------------------------------------------- labelling


def box_with_iou(gt, iou):
    """A box of the same height as gt, shifted right so that IoU(gt, box) == iou exactly."""
    x1, y1, x2, y2 = gt
    w = x2 - x1
    shift = w * (1 - iou) / (1 + iou)  # overlap (w - s) / union (w + s) = iou
    return [x1 + shift, y1, x2 + shift, y2]


def test_label_regions_near_threshold():
    gt = np.array([[0, 0, 100, 100]], np.float32)
    props = np.array([box_with_iou(gt[0], v) for v in (0.52, 0.48, 0.35, 0.9, 0.0)], np.float32)
    labels, ious, matched = label_regions(props, gt, np.array([1]), pos_iou=0.5, neg_iou=0.4)
    np.testing.assert_allclose(ious, [0.52, 0.48, 0.35, 0.9, 0.0], atol=1e-5)
    assert labels.tolist() == [1, -1, 0, 1, 0]
    assert matched.tolist() == [0, 0, 0, 0, -1]


def test_label_regions_several_classes_best_overlap_wins():
    gt = np.array([[0, 0, 100, 100], [60, 0, 160, 100]], np.float32)
    # the third box overlaps both: IoU 55/125 = 0.44 with the first, 65/115 = 0.565 with the second
    props = np.array([[0, 0, 100, 100], [55, 0, 160, 100], [45, 0, 125, 100], [30, 0, 80, 100]], np.float32)
    labels, ious, matched = label_regions(props, gt, np.array([1, 2]), 0.5, 0.5)
    assert labels.tolist() == [1, 2, 2, 1]
    assert matched.tolist() == [0, 1, 1, 0]
    np.testing.assert_allclose(ious[2], 65 / 115, rtol=1e-5)


def test_label_regions_image_without_objects_and_empty():
    labels, ious, matched = label_regions(np.array([[0, 0, 10, 10]], np.float32), np.zeros((0, 4)), np.zeros(0), 0.5, 0.5)
    assert labels.tolist() == [0] and matched.tolist() == [-1]
    labels, ious, matched = label_regions(np.zeros((0, 4)), np.array([[0, 0, 5, 5]]), np.array([1]), 0.5, 0.5)
    assert labels.shape == (0,) and labels.dtype == np.int64


def test_select_regions_keeps_all_positives():
    labels = np.array([0] * 50 + [1, 2, -1] + [0] * 50)
    keep = select_regions(labels, 10, np.random.default_rng(0))
    assert set(np.flatnonzero(labels > 0)) <= set(keep)
    assert (labels[keep] == 0).sum() == 10 and (labels[keep] == -1).sum() == 0
    assert len(select_regions(labels, -1, np.random.default_rng(0))) == 102


def test_select_regions_draws_partial_overlaps_first():
    labels = np.array([0] * 100 + [1])
    ious = np.zeros(101, np.float32)
    ious[:6] = [0.1, 0.2, 0.3, 0.45, 0.05, 0.09]  # four partial overlaps (>= 0.1), two barely touching
    keep = select_regions(labels, 10, np.random.default_rng(0), ious, hard_fraction=0.5, hard_iou=0.1)
    assert len(keep) == 11 and {0, 1, 2, 3, 100} <= set(keep)  # all 4 hard ones (fewer than 5 exist) + 6 at random
    keep = select_regions(labels, 4, np.random.default_rng(0), ious, hard_fraction=0.5, hard_iou=0.1)
    assert len(keep) == 5 and len(set(keep) & {0, 1, 2, 3}) >= 2
    # 0 = the reference's uniform sampling, whatever the overlaps
    rng_a, rng_b = np.random.default_rng(1), np.random.default_rng(1)
    np.testing.assert_array_equal(select_regions(labels, 10, rng_a, ious, 0.0), select_regions(labels, 10, rng_b))


def test_class_weights_match_sklearn():
    from sklearn.utils.class_weight import compute_class_weight

    y = np.array([0] * 70 + [1] * 3 + [2] * 7)
    ours = class_weights({"background": 70, "cat": 3, "dog": 7})
    ref = compute_class_weight("balanced", classes=np.array([0, 1, 2]), y=y)
    np.testing.assert_allclose(list(ours.values()), ref, rtol=1e-5)
    assert class_weights({"background": 5, "cat": 0})["cat"] == 0.0


def test_encode_decode_roundtrip():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 100, (20, 2))
    p = np.concatenate([p, p + rng.uniform(5, 50, (20, 2))], 1)
    g = p + rng.uniform(-4, 4, (20, 4))
    np.testing.assert_allclose(decode(p, encode(p, g)), g, atol=1e-3)


# ----------------------------------------------------------------------------- warping


def test_warp_identity_and_subregion():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    out = warp_regions(img, np.array([[0, 0, 32, 32]], np.float32), size=32, context=0)
    np.testing.assert_array_equal(out[0], img)
    # an exact 2x downscale is the mean of 2x2 blocks
    out = warp_regions(img, np.array([[0, 0, 32, 32]], np.float32), size=16, context=0)
    ref = img.astype(float).reshape(16, 2, 16, 2, 3).mean((1, 3))
    assert np.abs(out[0].astype(float) - ref).max() <= 1.0
    # a sub-box maps exactly
    out = warp_regions(img, np.array([[8, 4, 24, 20]], np.float32), size=16, context=0)
    np.testing.assert_array_equal(out[0], img[4:20, 8:24])


def test_crop_codec_roundtrip():
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 255, (3, 16, 16, 3), dtype=np.uint8)
    data, offsets = encode_crops(crops, "png")
    for k in range(3):
        np.testing.assert_array_equal(decode_crop(data[offsets[k] : offsets[k + 1]]), crops[k])


# ----------------------------------------------------------------------------- proposals


def test_selective_search_is_reproducible_and_valid(synth_parsed):
    ds = Dataset.load(synth_parsed)
    img = load_rgb(ds.images[1].path)
    cfg = ProposeConfig(max_proposals=150, max_side=200)
    a, b = selective_search(img, cfg), selective_search(img, cfg)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and 0 < len(a) <= 150
    assert (a[:, 2] - a[:, 0] >= cfg.min_size).all() and (a[:, 3] - a[:, 1] >= cfg.min_size).all()
    assert a[:, 2].max() <= img.shape[1] and a[:, 3].max() <= img.shape[0] and a.min() >= 0
    assert len(np.unique(a, axis=0)) == len(a)


def test_recall_counts():
    gt = [np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32), np.zeros((0, 4), np.float32)]
    props = [np.array([[0, 0, 10, 12], [50, 50, 60, 60]], np.float32), np.array([[0, 0, 1, 1]], np.float32)]
    assert recall(gt, props, 0.5) == (1, 2)
    assert recall(gt, props, 0.9) == (0, 2)
    assert recall(gt, props, 0.5, top_k=1) == (1, 2)


def test_missing_contrib_build_says_how_to_fix(monkeypatch):
    monkeypatch.delattr(propose_mod.cv2, "ximgproc")
    with pytest.raises(MissingDependencyError, match="pip install opencv-contrib-python-headless"):
        selective_search(np.zeros((20, 20, 3), np.uint8))


def test_bad_mode_is_a_value_error():
    with pytest.raises(ValueError, match="'mode=slow'"):
        ProposeConfig(mode="slow")


def test_propose_and_crop_cli(tmp_path, synth_parsed):
    props = tmp_path / "props"
    runner = CliRunner()
    args = ["propose", str(synth_parsed), "--out", str(props), "--workers", "2", "--max-side", "200"]
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    report = json.loads((props / "report.json").read_text())
    assert {"recall50", "recall70", "proposals_per_image", "seconds"} <= set(report)
    assert report["computed"] == 12 and report["recall50"] > 0.8
    first = {p.name: np.load(p) for p in (props / "boxes").glob("*.npy")}
    # a re-run reuses everything; recomputing from scratch gives identical proposals
    res = runner.invoke(main, args)
    assert json.loads((props / "report.json").read_text())["reused"] == 12
    for p in (props / "boxes").glob("*.npy"):
        p.unlink()
    runner.invoke(main, args)
    for p in (props / "boxes").glob("*.npy"):
        np.testing.assert_array_equal(np.load(p), first[p.name])

    crops = tmp_path / "crops"
    res = runner.invoke(main, ["crop", str(synth_parsed), str(props), "--out", str(crops), "--size", "64",
                               "--context", "4", "--neg-per-image", "8", "--format", "imagefolder"])
    assert res.exit_code == 0, res.output
    rep = json.loads((crops / "report.json").read_text())
    assert set(rep["kept"]) == {"background", "disc", "square"} and rep["kept"]["background"] == 8 * 9
    assert set(rep["class_weights"]) == set(rep["kept"])
    meta = json.loads((crops / "meta.json").read_text())
    n_train = len(meta["images"])
    shard = load_shard(crops / "shards" / f"{meta['images'][1]}.npz")
    assert (shard["labels"] > 0).sum() >= 1 and decode_crop(shard["data"][: shard["offsets"][1]]).shape == (64, 64, 3)
    assert len((crops / "index.csv").read_text().splitlines()) == rep["regions"] + 1
    assert len(list((crops / "imagefolder").rglob("*.jpg"))) == rep["regions"]
    assert n_train == 9


def test_crop_without_proposals_is_one_line(tmp_path, synth_parsed):
    (tmp_path / "p").mkdir()
    res = CliRunner().invoke(main, ["crop", str(synth_parsed), str(tmp_path / "p"), "--out", str(tmp_path / "c")])
    assert res.exit_code == 1 and "proposal settings not found" in res.output and "Traceback" not in res.output


def test_mining_pool_is_disjoint_below_its_iou_and_off_by_default():
    from rcnn.crop import select_pool

    labels = np.array([0] * 40 + [1, -1])
    ious = np.r_[np.linspace(0, 0.49, 40), 0.8, 0.45].astype(np.float32)
    keep = select_regions(labels, 10, np.random.default_rng(0), ious)
    pool = select_pool(labels, ious, keep, 8, 0.3, np.random.default_rng(0))
    assert len(pool) == 8 and not set(pool) & set(keep) and (labels[pool] == 0).all() and (ious[pool] < 0.3).all()
    assert np.all(np.diff(pool) > 0)
    everything = select_pool(labels, ious, keep, 1000, 0.3, np.random.default_rng(0))  # fewer exist than asked
    assert set(everything) == set(np.flatnonzero(ious < 0.3)) - set(keep)
    assert len(select_pool(labels, ious, keep, 0, 0.3, np.random.default_rng(0))) == 0


def test_crop_keeps_the_mining_pool_apart(tmp_path, synth_parsed, synth_props):
    from rcnn.crop import CropConfig, crop_dataset, load_shard
    from rcnn.parse import Dataset
    from rcnn.train import RegionSet

    ds = Dataset.load(synth_parsed)
    base = dict(size=32, context=2, neg_per_image=6)
    plain = crop_dataset(ds, synth_props, tmp_path / "a", CropConfig(**base), progress=False)
    pooled = crop_dataset(ds, synth_props, tmp_path / "b", CropConfig(**base, mine_pool=5), progress=False)
    assert plain["kept"] == pooled["kept"]  # the pool is not counted, nor weighted, as training regions
    assert plain["class_weights"] == pooled["class_weights"] and plain["mining_pool"] == 0
    assert 0 < pooled["mining_pool"] <= 5 * pooled["images"]
    assert pooled["background_not_sampled"] == plain["background_not_sampled"] - pooled["mining_pool"]
    image = ds.split("train")[0].id
    a, b = load_shard(tmp_path / "a" / "shards" / f"{image}.npz"), load_shard(tmp_path / "b" / "shards" / f"{image}.npz")
    n = len(a["labels"])
    np.testing.assert_array_equal(b["boxes"][:n], a["boxes"])  # the same training regions, then the pool
    assert not b["pool"][:n].any() and b["pool"][n:].all() and (b["ious"][n:] < 0.3).all()
    regions = RegionSet.load(tmp_path / "b")
    assert int(regions.pool.sum()) == pooled["mining_pool"] and (regions.labels[regions.pool] == 0).all()
    rows = (tmp_path / "b" / "index.csv").read_text().splitlines()
    assert rows[0].endswith(",pool") and sum(r.endswith(",1") for r in rows[1:]) == pooled["mining_pool"]
