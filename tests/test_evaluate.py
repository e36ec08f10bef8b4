from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from rcnn.evaluate import average_precision, class_pr, evaluate, match_detections
from rcnn.parse import Annotation, Dataset, Object


def dataset(gt: dict[str, list[tuple[str, list[float], bool]]]) -> Dataset:
    images = [Annotation(id=k, path=f"/data/{k}.jpg", width=500, height=500, split="test",
                         objects=[Object(l, b, d) for l, b, d in objs]) for k, objs in gt.items()]
    classes = sorted({o.label for a in images for o in a.objects} | {"cat", "dog"})
    return Dataset(images=images, classes=classes)


def det(image: str, label: str, box: list[float], score: float) -> dict:
    x1, y1, x2, y2 = box
    return {"file_name": f"/data/{image}.jpg", "category": label, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score}


A, B = [10, 10, 110, 110], [200, 200, 300, 300]


def test_duplicates_are_false_positives():
    ds = dataset({"i": [("cat", A, False), ("cat", B, False)]})
    r = evaluate([det("i", "cat", A, 0.9), det("i", "cat", A, 0.8), det("i", "cat", B, 0.7)], ds)
    # TP, FP, TP: recall .5 .5 1, precision 1 .5 .667 -> AP = .5 * 1 + .5 * 2/3
    assert r["ap50"]["cat"] == pytest.approx(0.5 + 0.5 * 2 / 3, abs=1e-4)


def test_no_detections_and_class_without_ground_truth():
    ds = dataset({"i": [("cat", A, False)]})
    r = evaluate([det("i", "dog", A, 0.9)], ds)
    assert r["ap50"]["cat"] == 0.0  # objects, but no detections
    assert r["ap50"]["dog"] is None  # no ground truth: undefined, left out of the mean
    assert r["map50"] == 0.0
    r = evaluate([], ds)
    assert r["map50"] == 0.0 and r["map50_95"] == 0.0


def test_difficult_objects_are_ignored():
    ds = dataset({"i": [("cat", A, False), ("cat", B, True)]})
    r = evaluate([det("i", "cat", B, 0.95), det("i", "cat", A, 0.9)], ds)
    assert r["ap50"]["cat"] == 1.0
    assert r["gt_per_class"]["cat"] == 1
    # missing a difficult object costs nothing either
    assert evaluate([det("i", "cat", A, 0.9)], ds)["ap50"]["cat"] == 1.0


def test_perfect_and_half():
    ds = dataset({"i": [("cat", A, False)], "j": [("cat", B, False)]})
    assert evaluate([det("i", "cat", A, 0.9), det("j", "cat", B, 0.8)], ds)["map50"] == 1.0
    # a false positive ranked first: precision 0, then 0.5 at recall 1, so AP = 0.5
    r = evaluate([det("i", "cat", [300, 300, 400, 400], 0.95), det("i", "cat", A, 0.9)], dataset({"i": [("cat", A, False)]}))
    assert r["ap50"]["cat"] == pytest.approx(0.5)


def test_match_detections_greedy_by_score():
    gt = np.array([A], np.float32)
    flags = match_detections(np.array([A, A], np.float32), np.array([0.1, 0.9]), gt, np.array([False]))
    assert flags.tolist() == [0, 1]  # the better-scored one takes the object


def test_voc_all_point_hand_case():
    rec, prec = np.array([0.2, 0.4, 0.4, 0.6]), np.array([1.0, 1.0, 0.67, 0.75])
    # envelope: 1, 1, .75, .75 -> .2 * 1 + .2 * 1 + .2 * .75
    assert average_precision(rec, prec) == pytest.approx(0.55)
    assert average_precision(np.zeros(0), np.zeros(0)) == 0.0


def coco101_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """The oracle's side: pycocotools' AP, the mean interpolated precision at recall 0, 0.01, ..., 1."""
    if len(recall) == 0:
        return 0.0
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    idx = np.searchsorted(recall, np.linspace(0.0, 1.0, 101), side="left")
    return float(np.mean(np.where(idx < len(recall), envelope[np.minimum(idx, len(recall) - 1)], 0.0)))


def random_case(seed: int, n_images: int = 25):
    """Ground truth on a grid (no two boxes overlap) and noisy detections with false positives."""
    rng = np.random.default_rng(seed)
    gts, dets = {}, {}
    for i in range(n_images):
        cells = rng.choice(16, size=rng.integers(0, 4), replace=False)
        g = np.array([[c % 4 * 120 + 10, c // 4 * 120 + 10, c % 4 * 120 + 100, c // 4 * 120 + 100] for c in cells], np.float32).reshape(-1, 4)
        keep = rng.random(len(g)) < 0.8
        d = g[keep] + rng.uniform(-25, 25, (int(keep.sum()), 4))
        fp = rng.uniform(0, 400, (int(rng.integers(0, 3)), 2))
        d = np.concatenate([d, np.concatenate([fp, fp + rng.uniform(20, 90, (len(fp), 2))], 1)]).astype(np.float32)
        gts[f"im{i}"] = g
        dets[f"im{i}"] = (d, rng.random(len(d)))
    return gts, dets


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("iou", [0.5, 0.75])
def test_ap_matches_pycocotools(seed, iou):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gts, dets = random_case(seed)
    ids = {k: i + 1 for i, k in enumerate(gts)}
    gt = {"images": [{"id": i} for i in ids.values()], "categories": [{"id": 1, "name": "cat"}], "annotations": []}
    for k, g in gts.items():
        for b in g:
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": ids[k], "category_id": 1, "iscrowd": 0,
                                      "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
                                      "area": float((b[2] - b[0]) * (b[3] - b[1]))})
    res = [{"image_id": ids[k], "category_id": 1, "score": float(s), "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]}
           for k, (d, sc) in dets.items() for b, s in zip(d, sc)]
    with contextlib.redirect_stdout(io.StringIO()):
        cg = COCO()
        cg.dataset = gt
        cg.createIndex()
        ev = COCOeval(cg, cg.loadRes(res), "bbox")
        ev.params.iouThrs = np.array([iou])
        ev.evaluate()
        ev.accumulate()
    ref = float(ev.eval["precision"][0, :, 0, 0, -1].mean())
    rec, prec, _ = class_pr(dets, {k: (g, np.zeros(len(g), bool)) for k, g in gts.items()}, iou)
    # our matching (class_pr), read out the way pycocotools reads its curve, gives its AP
    assert coco101_ap(rec, prec) == pytest.approx(ref, abs=1e-9)
    assert 0.0 < ref < 1.0


def test_evaluate_coco_map_in_range_and_reported():
    ds = dataset({"i": [("cat", A, False)], "j": [("cat", B, False)]})
    r = evaluate([det("i", "cat", [12, 12, 112, 112], 0.9), det("j", "cat", [230, 230, 330, 330], 0.8)], ds)
    assert r["map50"] == pytest.approx(0.5)  # the second box has IoU 0.325
    assert 0.0 < r["map50_95"] < r["map50"]


def test_plain_coco_results_with_category_ids():
    ds = dataset({"i": [("cat", A, False)]})
    d = det("i", "cat", A, 0.9)
    del d["category"]
    d["category_id"] = ds.classes.index("cat") + 1
    assert evaluate([d], ds)["ap50"]["cat"] == 1.0
    with pytest.raises(Exception, match="needs 'bbox'"):
        evaluate([{"file_name": "/data/i.jpg", "score": 0.5}], ds)


# --------------------------------------------------------------------------- confusion matrix (issue 12, item 5)

C, D = [400, 10, 480, 90], [10, 400, 90, 480]


def test_confusion_matrix_counts_by_hand(tmp_path):
    ds = dataset({"i": [("cat", A, False), ("dog", B, False), ("cat", D, True)], "j": [("dog", A, False)]})
    dets = [
        det("i", "cat", A, 0.9),  # cat found: (cat, cat)
        det("i", "cat", [205, 205, 300, 300], 0.8),  # the dog called a cat: (dog, cat)
        det("i", "dog", [215, 215, 300, 300], 0.3),  # overlaps the dog less (IoU 0.72 < 0.90): a false alarm (background, dog)
        det("i", "dog", C, 0.7),  # nothing there: (background, dog)
        det("i", "dog", A, 0.1),  # under the 0.25 score: not counted
        det("i", "cat", D, 0.9),  # the difficult cat: not counted
    ]  # and the dog of j is missed: (dog, background)
    r = evaluate(dets, ds, plot=tmp_path / "pr.png", confusion_plot=tmp_path / "cm.png")
    cm = r["confusion_matrix"]
    assert cm["labels"] == ["cat", "dog", "background"] and cm["rows"] == "ground truth" and cm["conf"] == 0.25
    # rows: true cat, dog, background; columns: detected cat, dog, background
    assert cm["matrix"] == [[1, 0, 0],
                            [1, 0, 1],
                            [0, 2, 0]]
    from PIL import Image

    for png in ("pr.png", "cm.png"):
        with Image.open(tmp_path / png) as im:
            assert im.format == "PNG" and im.text.get("rcnn") == "evaluate"
    assert evaluate(dets, ds, confusion_conf=0.05)["confusion_matrix"]["matrix"] == [[1, 0, 0], [1, 0, 1], [0, 3, 0]]
    assert evaluate([], ds)["confusion_matrix"]["matrix"] == [[0, 0, 1], [0, 0, 2], [0, 0, 0]]
    # pairs are matched by IoU, not by score (as Ultralytics does): the exact dog box takes the dog
    exact = [det("i", "cat", [205, 205, 300, 300], 0.8), det("i", "dog", B, 0.3)]
    assert evaluate(exact, ds)["confusion_matrix"]["matrix"] == [[0, 0, 1], [0, 1, 1], [1, 0, 0]]
    with pytest.raises(ValueError, match="confusion_conf"):
        evaluate(dets, ds, confusion_conf=1.5)
