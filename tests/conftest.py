from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
RACCOON = SHARED / "raccoon"


def shared_dataset(path: Path, marker: str) -> Path:
    """``path`` when its ``marker`` folder is there; else skip, or fail in CI (``CI=true``), where ../shared must be laid.

    A broken CI layout must not hide the tests on real data behind a skip.
    """
    if (path / marker).is_dir():
        return path
    message = f"{path} is not present (../shared/datasets beside the repository)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI: {message}")
    pytest.skip(message)


@pytest.fixture(scope="session")
def raccoon() -> Path:
    return shared_dataset(RACCOON, "annotations")


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rcnn.synth import make_dataset

    return make_dataset(tmp_path_factory.mktemp("synth"), images=12, seed=3)


@pytest.fixture(scope="session")
def synth_parsed(synth_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rcnn.parse import parse_dataset

    out = tmp_path_factory.mktemp("parsed") / "parsed.json"
    parse_dataset(synth_data).save(out)
    return out


def write_image(path: Path, width: int = 64, height: int = 48, mode: str = "RGB") -> Path:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    im = Image.fromarray(arr)
    if mode != "RGB":
        im = im.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


def voc_xml(filename: str | None, objects: list[tuple], size: tuple[int, int] | None = (64, 48)) -> str:
    """objects: (name, xmin, ymin, xmax, ymax[, difficult]) with any values (strings allowed)."""
    parts = ["<annotation>"]
    if filename is not None:
        parts.append(f"<filename>{filename}</filename>")
    if size is not None:
        parts.append(f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>")
    for o in objects:
        name, box = o[0], o[1:5]
        diff = f"<difficult>{o[5]}</difficult>" if len(o) > 5 else ""
        parts.append(
            f"<object><name>{name}</name>{diff}<bndbox><xmin>{box[0]}</xmin><ymin>{box[1]}</ymin>"
            f"<xmax>{box[2]}</xmax><ymax>{box[3]}</ymax></bndbox></object>"
        )
    parts.append("</annotation>")
    return "".join(parts)


@pytest.fixture(scope="session")
def synth_props(synth_parsed: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rcnn.parse import Dataset
    from rcnn.propose import ProposeConfig, propose_dataset

    out = tmp_path_factory.mktemp("props")
    propose_dataset(Dataset.load(synth_parsed), out, ProposeConfig(max_side=200), workers=1, progress=False)
    return out


@pytest.fixture(scope="session")
def synth_crops(synth_parsed: Path, synth_props: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rcnn.crop import CropConfig, crop_dataset
    from rcnn.parse import Dataset

    out = tmp_path_factory.mktemp("crops")
    crop_dataset(Dataset.load(synth_parsed), synth_props, out, CropConfig(size=64, context=4, neg_per_image=24),
                 progress=False)
    return out


@pytest.fixture(scope="session")
def synth_model(synth_crops: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rcnn.train import TrainConfig, train

    out = tmp_path_factory.mktemp("model")
    train(synth_crops, out, TrainConfig(backbone="efficientnet_lite0", epochs=8, optimizer="adam", lr=3e-3,
                                        batch_size=32), progress=False)
    return out


# a Fast R-CNN small enough to train in seconds (random backbone weights: these tests check plumbing, not accuracy)
FAST_TINY = dict(weights="none", image_size=64, max_image_size=96, epochs=3, rois_per_image=16, hidden=32)


@pytest.fixture(scope="session")
def fast_model(synth_parsed: Path, synth_props: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rcnn.fast import FastConfig, train_fast_model

    out = tmp_path_factory.mktemp("fast_model")
    train_fast_model(synth_parsed, synth_props, out, FastConfig(**FAST_TINY), progress=False, echo=lambda _: None)
    return out
