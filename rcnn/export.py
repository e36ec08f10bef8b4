"""The network part of a model folder as ONNX, checked against PyTorch with onnxruntime.

What is exported is the part that runs in a deep-learning runtime; selective search, region
warping, thresholds and NMS stay in Python (they are the same for either runtime):

- a classic (``rcnn``) model: the classifier on a batch of warped, normalised crops,
  ``crops`` ``[B, 3, S, S]`` float32 → ``scores`` ``[B, C]`` (softmax) and ``deltas`` ``[B, C, 4]``;
- a Fast R-CNN (``fast``) model: backbone + RoIAlign + head on one resized, normalised, padded image
  and its regions, ``image`` ``[1, 3, H, W]`` and ``rois`` ``[R, 4]`` (x1, y1, x2, y2 in that image's
  pixels) → ``scores`` ``[R, C]`` and ``deltas`` ``[R, C, 4]`` (R-CNN's unit-weight deltas).

B, R, H and W are dynamic. :func:`export_onnx` runs both on real crops (or regions) of check images
and refuses to keep a file whose scores differ from PyTorch's by more than :data:`MAX_SCORE_DIFF`.
"""

from __future__ import annotations

import copy
import io as _io
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import DataError, MissingDependencyError
from .io import digest, folder_kind, load_rgb, write_atomic
from .model import LoadedModel, auto_batch_size

ONNX_FORMAT = "rcnn-onnx-v1"  # metadata_props "rcnn" of every file we write: how a re-run knows its own file
OPSET = 17  # torchvision's roi_align exports from opset 16
MAX_SCORE_DIFF = 1e-4  # largest |onnxruntime - PyTorch| score accepted by the export check
MAX_DELTA_DIFF = 1e-3  # ... and of box deltas, when a stored graph is bound to its model (tests/test_export.py sees <= 1e-4)
INSTALL_HINT = "install it with `pip install 'rcnn[onnx]'` (or `pip install onnx onnxruntime`)"


def require_onnx(*modules: str) -> None:
    """Import ``modules`` or raise MissingDependencyError saying in one line how to install them."""
    import importlib

    for m in modules:
        try:
            importlib.import_module(m)
        except ImportError:
            raise MissingDependencyError(f"ONNX support needs the '{m}' package; {INSTALL_HINT}") from None


def graph_class(model: LoadedModel) -> Any:
    """The ONNX graph module of the model's architecture (:attr:`rcnn.arch.ArchSpec.graph`): it wraps the network
    and says its ``INPUTS``, ``DYNAMIC`` axes, how to make its ``inputs`` and how to ``run`` a session."""
    return model.spec.part("graph")


def graph_inputs(model: LoadedModel, image: np.ndarray, boxes: np.ndarray) -> dict[str, np.ndarray]:
    """The ONNX inputs of ``boxes`` (original pixels) in an RGB image: warped crops, or the image and scaled rois."""
    return graph_class(model).inputs(model, image, boxes)


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote and how it checked it."""

    path: str
    arch: str
    opset: int
    inputs: list[str]
    max_score_diff: float  # max |onnxruntime - PyTorch| over every checked score
    max_delta_diff: float
    regions_checked: int
    images_checked: int
    seconds: float


def export_graph(model: LoadedModel, sample: dict[str, np.ndarray], opset: int = OPSET) -> bytes:
    """The ONNX bytes of ``model``'s network, traced on ``sample`` (:func:`graph_inputs`), batch dims dynamic."""
    require_onnx("onnx")
    import onnx

    net = copy.deepcopy(model.net).cpu().eval()  # the PyTorch model stays where it is, as it is
    graph = graph_class(model)(net)
    names = list(sample)
    dynamic = dict(graph.DYNAMIC)
    buf = _io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's notes on constants (sizes traced as python ints are checked below)
        torch.onnx.export(graph, tuple(torch.from_numpy(v) for v in sample.values()), buf, dynamo=False,
                          opset_version=opset, input_names=names, output_names=["scores", "deltas"], dynamic_axes=dynamic)
    proto = onnx.load_from_string(buf.getvalue())
    meta = {"rcnn": ONNX_FORMAT, "arch": model.arch, "classes": ",".join(model.classes),
            "backbone": model.config.backbone, "input_size": str(model.input_size), "model_digest": model_digest(model)}
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def model_digest(model: LoadedModel) -> str:
    """SHA-1 of the model's config.json record (which holds its weights' SHA-1): what an exported graph was made from."""
    return digest(model.config.to_json())


def session(data: bytes | str | Path, threads: int = 0) -> Any:
    """An onnxruntime CPU session of ONNX bytes or a file; ``threads`` 0 = as many as torch uses."""
    require_onnx("onnxruntime")
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.log_severity_level = 3  # errors only
    return ort.InferenceSession(data if isinstance(data, bytes) else str(data), opts, providers=["CPUExecutionProvider"])


def check_graph(model: LoadedModel, sess: Any, images: list[np.ndarray], regions: int = 64) -> tuple[float, float, int]:
    """Max |onnxruntime - PyTorch| of scores and of deltas over the first ``regions`` proposals of each image.

    Returns:
        (max score difference, max delta difference, regions compared).
    """
    from .propose import selective_search

    d_scores = d_deltas = 0.0
    n = 0
    for image in images:
        boxes = selective_search(image, model.config.propose)[:regions]
        if len(boxes) == 0:
            continue
        ref_scores, ref_deltas = model.score_boxes(image, boxes)
        scores, deltas = run_graph(model, sess, image, boxes)
        d_scores = max(d_scores, float(np.abs(scores - ref_scores).max()))
        d_deltas = max(d_deltas, float(np.abs(deltas - ref_deltas).max()))
        n += len(boxes)
    return d_scores, d_deltas, n


def run_graph(model: LoadedModel, sess: Any, image: np.ndarray, boxes: np.ndarray, batch_size: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities ``[N, C]`` and deltas ``[N, C, 4]`` of ``boxes`` in an RGB image, by onnxruntime."""
    c = len(model.classes)
    if len(boxes) == 0:
        return np.zeros((0, c), np.float32), np.zeros((0, c, 4), np.float32)
    return graph_class(model).run(sess, graph_inputs(model, image, boxes), batch_size or auto_batch_size("cpu"))


def check_images(paths: list[str | Path] | None) -> list[np.ndarray]:
    """The images an export is checked on: those given, or two synthetic scenes of different sizes
    (two sizes: the dynamic height and width of a Fast R-CNN graph are checked too)."""
    if paths:
        return [load_rgb(p) for p in paths]
    from .synth import scene

    return [scene(240, 320, seed=0), scene(300, 220, seed=1)]


def check_onnx_out(out: Path, model_dir: Path) -> None:
    """Refuse ``out`` unless it is new or an ONNX file this command wrote, outside other rcnn folders (a model folder is fine)."""
    if out.is_dir():
        raise DataError(f"--out {out} is a folder; give a file path such as model.onnx")
    kind = folder_kind(out.parent) if out.parent.is_dir() else None
    if kind not in (None, "model"):
        raise DataError(f"--out {out} lies inside an rcnn {kind} folder; choose a path outside it")
    if kind == "model" and out.name in ("model.pt", "config.json", "report.json", "checkpoint.pt", "history.csv"):
        raise DataError(f"--out {out} would replace a file of the model folder; choose another name")
    if out.exists() or out.is_symlink():
        if not is_own_onnx(out):
            raise DataError(f"--out {out} exists and was not written by `rcnn export`; choose another path (or remove it yourself)")


def onnx_metadata(path: Path) -> dict[str, str]:
    """The metadata of an ONNX file ({} when it is not one, cannot be read, or onnx is missing)."""
    try:
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # not ONNX, unreadable, or onnx missing
        return {}
    return {p.key: p.value for p in proto.metadata_props}


def is_own_onnx(path: Path) -> bool:
    """Whether ``path`` is an ONNX file whose metadata says rcnn wrote it."""
    return onnx_metadata(path).get("rcnn") == ONNX_FORMAT


def export_onnx(model_dir: str | Path, out: str | Path | None = None, opset: int = OPSET,
                images: list[str | Path] | None = None, regions: int = 64) -> ExportReport:
    """Export the network of the model folder ``model_dir`` to ONNX at ``out`` (default ``model_dir/model.onnx``).

    The file is written only after onnxruntime reproduced PyTorch's scores on the first ``regions``
    selective-search proposals of each check image (``images``, or two synthetic scenes) to within
    :data:`MAX_SCORE_DIFF`; it is written atomically, and never over a file rcnn did not write.

    Raises:
        MissingDependencyError: onnx or onnxruntime is not installed (the message says how to install them).
        DataError: a bad model folder or output path, or the check failed.
    """
    from .model import load_model

    t0 = time.perf_counter()
    require_onnx("onnx", "onnxruntime")
    model_dir = Path(model_dir)
    out = Path(out) if out is not None else model_dir / "model.onnx"
    check_onnx_out(out, model_dir)
    if not 16 <= opset <= 21:
        raise ValueError(f"'opset={opset}' is invalid; roi_align needs opset 16 or later, and 21 is the newest tested")
    model = load_model(model_dir, "cpu")
    pics = check_images(images)
    data = export_graph(model, graph_inputs(model, pics[0], selective_search_first(model, pics[0])), opset)
    d_scores, d_deltas, n = check_graph(model, session(data), pics, regions)
    if n == 0:
        raise DataError("the export check found no region to compare in its images; give other --check-image files")
    if not d_scores <= MAX_SCORE_DIFF:
        raise DataError(f"onnxruntime's scores differ from PyTorch's by {d_scores:.2e} (more than {MAX_SCORE_DIFF:g}); "
                        "nothing was written")
    write_atomic(out, lambda p: p.write_bytes(data))
    inputs = list(graph_class(model).INPUTS)
    return ExportReport(os.fspath(out), model.arch, opset, inputs, d_scores, d_deltas, n, len(pics),
                        round(time.perf_counter() - t0, 2))


def selective_search_first(model: LoadedModel, image: np.ndarray, n: int = 8) -> np.ndarray:
    """A few proposals of ``image`` to trace the graph with (any boxes would do; the batch size is dynamic)."""
    from .propose import selective_search

    boxes = selective_search(image, model.config.propose)[:n]
    h, w = image.shape[:2]
    return boxes if len(boxes) else np.array([[0, 0, w, h]], np.float32)


# --------------------------------------------------------------------------- detect --runtime onnx


@dataclass
class OnnxModel(LoadedModel):
    """A loaded model whose network runs in onnxruntime; everything else (warping, NMS) is as in PyTorch."""

    sess: Any = None

    def score_boxes(self, image: np.ndarray, boxes: np.ndarray, batch_size: int = 0) -> tuple[np.ndarray, np.ndarray]:
        return run_graph(self, self.sess, image, boxes, batch_size)


def onnx_model(model: LoadedModel, opset: int = OPSET) -> OnnxModel:
    """``model`` run by onnxruntime (CPU): the graph ``rcnn export`` left in its folder (``model.onnx``) when it
    was exported from this very model, else its network exported now, in memory (a few seconds)."""
    require_onnx("onnx", "onnxruntime")
    cached = verified_graph(model)
    if cached is not None:
        return OnnxModel(model.net, model.config, model.device, model.folder, cached)
    image = check_images(None)[0]
    data = export_graph(model, graph_inputs(model, image, selective_search_first(model, image)), opset)
    return OnnxModel(model.net, model.config, model.device, model.folder, session(data))


# The load check: a small synthetic scene and a few fixed boxes on it, scored by both runtimes. Metadata can be
# copied from one file to another; the scores bind the graph itself to this model's weights (about 0.1 s).
LOAD_CHECK_SIZE = (96, 128)  # (height, width) of the synthetic scene
LOAD_CHECK_BOXES = np.array([[0, 0, 128, 96], [8, 6, 72, 60], [40, 20, 120, 90], [20, 30, 60, 90],
                             [64, 0, 128, 48], [0, 48, 64, 96], [30, 10, 100, 80], [50, 40, 90, 70]], np.float32)


def reproduces(model: LoadedModel, sess: Any) -> bool:
    """Whether the onnxruntime session ``sess`` gives ``model``'s PyTorch scores and deltas on the load check
    (within :data:`MAX_SCORE_DIFF`); a graph of another network (other classes, other weights) does not."""
    from .synth import scene

    image = scene(*LOAD_CHECK_SIZE, seed=2)
    ref_scores, ref_deltas = model.score_boxes(image, LOAD_CHECK_BOXES)
    try:
        scores, deltas = run_graph(model, sess, image, LOAD_CHECK_BOXES)
    except Exception:  # another graph's inputs or shapes: onnxruntime raises its own error types
        return False
    if scores.shape != ref_scores.shape or deltas.shape != ref_deltas.shape:
        return False
    return bool(np.abs(scores - ref_scores).max() <= MAX_SCORE_DIFF and np.abs(deltas - ref_deltas).max() <= MAX_DELTA_DIFF)


def verified_graph(model: LoadedModel) -> Any | None:
    """An onnxruntime session of the model folder's ``model.onnx`` when its metadata names this model and the graph
    itself reproduces the model (:func:`reproduces`); None otherwise."""
    path = exported_graph(model)
    if path is None:
        return None
    sess = session(path)
    return sess if reproduces(model, sess) else None


def exported_graph(model: LoadedModel) -> Path | None:
    """``model.onnx`` of the model's folder if ``rcnn export`` wrote it from this model (same config and weights)."""
    path = model.folder / "model.onnx" if model.folder is not None else None
    if path is None or not path.is_file():
        return None
    meta = onnx_metadata(path)
    return path if meta.get("rcnn") == ONNX_FORMAT and meta.get("model_digest") == model_digest(model) else None


def with_runtime(model: LoadedModel, runtime: str) -> tuple[LoadedModel, str]:
    """``model`` in the runtime ``runtime`` names, and that runtime ("torch" or "onnx").

    "auto" is onnxruntime where it is installed, the model runs on the CPU and its folder holds a graph
    exported from it (``rcnn export MODEL``), else PyTorch; "onnx" exports the network when there is no such graph.
    An architecture that proposes its own regions (:attr:`rcnn.arch.ArchSpec.detector`) runs in PyTorch: its graph
    scores given regions, its detection runs the proposal network too ("auto" is then "torch", "onnx" an error).

    Raises:
        ValueError: "onnx" for such an architecture.
    """
    if isinstance(model, OnnxModel) or runtime == "torch":
        return model, "onnx" if isinstance(model, OnnxModel) else "torch"
    if model.spec.own_proposals:
        if runtime == "onnx":
            raise ValueError(f"--runtime onnx is not available for --arch {model.arch} models (they propose their own "
                             "regions in PyTorch); use --runtime torch")
        return model, "torch"
    if runtime == "auto":
        if model.device.type != "cpu" or model.folder is None or not (model.folder / "model.onnx").is_file():
            return model, "torch"  # (checked first: no onnx import, no file read, for a folder without a graph)
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError:
            return model, "torch"
        sess = verified_graph(model)
        if sess is None:  # none, another model's, or a graph whose weights are not this model's
            return model, "torch"
        return OnnxModel(model.net, model.config, model.device, model.folder, sess), "onnx"
    return onnx_model(model), "onnx"
