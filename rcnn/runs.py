"""The bookkeeping of a detection run folder: its plan (model, settings, inputs), the per-image parts
that make it resumable and shardable, and the check that no output replaces an input."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import DataError
from .io import digest, file_digest, read_json, write_json
from .model import LoadedModel
from .results import Detection, ImageResult
from .sources import is_video
from .writers import VIDEO_CODECS, RunFiles, folder_name


def _file_id(path: Path) -> tuple[int, int]:
    """(device, inode): equal for two paths of one file, whatever links or spellings lead to it."""
    st = path.stat()
    return st.st_dev, st.st_ino


def check_outputs(run: Path, paths: list[Path], names: list[str], save_images: bool, files: RunFiles) -> None:
    """Refuse a run whose outputs would replace one of its inputs (annotated images and videos, labels, crops).

    Raises:
        DataError: naming the output and the input.
    """
    planned = [run / n for n in ("detections.json", "detections.csv", "summary.json")]
    for p, n in zip(paths, names):
        if is_video(p):
            planned += [run / f"{n}{ext}" for ext, _ in VIDEO_CODECS] if save_images else []
        else:
            planned += [run / f"{n}.jpg"] if save_images else []
            planned += [run / "labels" / f"{n}.xml"] if files.save_xml else []
            planned += [run / "labels" / f"{n}.txt"] if files.save_txt else []
    inputs = {_file_id(p): p for p in paths}  # one stat per input and per output, not one per pair
    for out in planned:
        if out.exists() and _file_id(out) in inputs:
            raise DataError(f"output {out} would replace the input image {inputs[_file_id(out)]}; choose another --out")
    # frames' labels and every crop have names known only as they are written: no input may lie where they go
    written = [run / "crops"] if files.save_crop else []
    written += [run / "labels"] if (files.save_xml or files.save_txt) and any(map(is_video, paths)) else []
    for folder in (w.resolve() for w in written):
        for p in paths:
            if p.resolve().is_relative_to(folder):
                raise DataError(f"the input {p} lies in {folder}, where this run writes; choose another --out")


PLAN_FORMAT = "rcnn-detect-plan-v1"
PART_FORMAT = "rcnn-detect-part-v1"


@dataclass
class RunPlan:
    """What a detection run is: its model, settings and inputs (``parts/plan.json``), so that shards can
    check they run the same thing and ``--merge`` can finish it. ``config`` is ``asdict(DetectConfig)``."""

    model_key: str
    model: str | None  # the model folder, resolved (None: built in memory)
    inputs: list[str]  # resolved paths, in input order
    names: list[str]  # output names, one per input
    config: dict[str, Any]
    save_images: bool
    save_xml: bool
    save_txt: bool
    save_conf: bool
    save_crop: bool
    proposals: str | None
    model_classes: list[str]
    arch: str

    def digest(self) -> str:
        """Everything an image's outputs depend on, but the image: a part is reused only under this key."""
        return digest(PLAN_FORMAT, {k: v for k, v in asdict(self).items() if k not in ("inputs", "names")})

    def key(self, index: int, name: str, image_sha1: str) -> str:
        """The key of input ``index``'s part: the plan, the input, its output name and the SHA-1 of its bytes."""
        return digest(self.digest(), self.inputs[index], index, name, image_sha1)

    def files(self, run: Path) -> RunFiles:
        """The per-image files this plan writes into ``run``."""
        return RunFiles(run, self.model_classes, self.save_xml, self.save_txt, self.save_conf, self.save_crop)

    def save(self, run: Path, replace_other: bool, check: Callable[[dict[str, Any]], Any] | None = None) -> None:
        """Write ``run/parts/plan.json``; unless ``replace_other``, refuse a run folder that holds another plan
        (one that :meth:`load` with ``check`` refuses counts as none).

        Raises:
            DataError: ``run`` holds shards of another model, settings or inputs.
        """
        path = run / "parts" / "plan.json"
        if not replace_other and path.exists():
            try:
                old = RunPlan.load(run, check)
            except DataError:
                old = None
            if old is not None and (old.digest(), old.inputs, old.names) != (self.digest(), self.inputs, self.names):
                raise DataError(f"{run} holds detection shards of another model, settings or inputs; "
                                "choose another --out (or run without --shard to replace them)")
        write_json(path, {"format": PLAN_FORMAT, **asdict(self)})

    @classmethod
    def load(cls, run: Path, check: Callable[[dict[str, Any]], Any] | None = None) -> RunPlan:
        """Read ``run/parts/plan.json``; ``check(config)`` raises ValueError or TypeError on settings it refuses.

        Raises:
            DataError: there is no plan, or it is not one this rcnn wrote.
        """
        path = run / "parts" / "plan.json"
        if not path.is_file():
            raise DataError(f"{run} holds no detection shards (no {path}); run `rcnn detect --shard K/N --out {run}` first")
        d = read_json(path, "detection plan")
        try:
            if d.pop("format") != PLAN_FORMAT:
                raise ValueError("unknown format")
            plan = cls(**d)
            _check_names(plan)
            if check is not None:
                check(plan.config)
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise DataError(f"{path} is not a detection plan written by this rcnn ({e})") from None
        return plan


def _check_names(plan: RunPlan) -> None:
    """A plan's output names are plain file names (:func:`rcnn.sources.output_names` makes only such), one per input.

    Raises:
        ValueError: naming the first name that is not (``../x`` would write outside the run folder).
    """
    if not isinstance(plan.names, list) or not isinstance(plan.inputs, list) or len(plan.names) != len(plan.inputs):
        raise ValueError("'names' must be a list of one output name per input")
    for name in plan.names:
        if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or os.sep in name or "\0" in name:
            raise ValueError(f"the output name {name!r} is not a plain file name")
    if len(set(plan.names)) != len(plan.names):
        raise ValueError("'names' has duplicates")


def model_key(model: LoadedModel) -> str:
    """The identity of a model: its folder's config and weights, or (built in memory) this very object."""
    if model.folder is None:
        return f"memory-{id(model)}-{time.time()}"
    return digest([file_digest(f) for f in sorted(model.folder.glob("*")) if f.suffix in (".json", ".pt") and f.is_file()])


def image_sha(path: Path) -> str:
    """SHA-1 of an image's bytes, or "" when it cannot be read."""
    try:
        return file_digest(path)
    except DataError:
        return ""  # unreadable: detected (and reported) as a failure


@dataclass
class Part:
    """One image's record in ``parts/<name>.json``: its result or its error, under the key it was made with.

    Written last, once the image's files are: a part means they are there.
    """

    index: int  # the image's index among the run's inputs
    image_sha1: str  # SHA-1 of the image's bytes ("" when unreadable)
    result: ImageResult | None = None
    error: str | None = None  # one line when the image could not be read
    key: str = ""  # :meth:`RunPlan.key`; "" until the run sets it

    def to_json(self) -> dict[str, Any]:
        return {"format": PART_FORMAT, "index": self.index, "image_sha1": self.image_sha1,
                "result": asdict(self.result) if self.result is not None else None, "error": self.error, "key": self.key}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Part:
        r = d.get("result")
        result = ImageResult(**{**r, "detections": [Detection(**x) for x in r["detections"]]}) if r else None
        return cls(d["index"], d.get("image_sha1", ""), result, d.get("error"), d.get("key", ""))


def read_part(run: Path, name: str) -> Part | None:
    """``run/parts/<name>.json``, or None when missing or unreadable."""
    try:
        d = json.loads((run / "parts" / f"{name}.json").read_text())
        return Part.from_json(d) if isinstance(d, dict) and d.get("format") == PART_FORMAT else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_part(run: Path, name: str, part: Part) -> None:
    write_json(run / "parts" / f"{name}.json", part.to_json())


def part_files_exist(run: Path, plan: RunPlan, part: Part) -> bool:
    """Whether the per-image files of a finished part are still there (a part whose files were deleted is redone)."""
    if part.error or part.result is None:
        return bool(part.error)
    r = part.result
    wanted = [run / f"{r.name}.jpg"] if plan.save_images else []
    wanted += [run / "labels" / f"{r.name}.xml"] if plan.save_xml else []
    wanted += [run / "labels" / f"{r.name}.txt"] if plan.save_txt else []
    wanted += [run / "crops" / folder_name(d.label) / f"{r.name}_{k}.jpg" for k, d in enumerate(r.detections, 1)] if plan.save_crop else []
    return all(w.is_file() for w in wanted)
