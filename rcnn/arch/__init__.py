"""The architecture registry (detectron2's ``META_ARCH_REGISTRY``): one folder per architecture.

Each folder (``rcnn/arch/rcnn/``, ``rcnn/arch/fast/``) owns its settings class, network, trainer,
model-config checks, scorer, export graph and detection defaults, and describes them in its
:class:`ArchSpec` ``SPEC``. Nothing outside this package compares architecture names: it asks the
registry. Adding an architecture is one new folder and one line in ``ARCHS`` below.

To add one (``faster``): a folder ``rcnn/arch/faster/`` whose ``__init__.py`` defines ``SPEC = ArchSpec(...)``
naming, as ``"module:attr"`` strings, its settings dataclass (in a torch-free module), trainer (``fit``, built
on :mod:`rcnn.engine`), network builder, model-config check, scorer and ONNX graph, with its detection
defaults; then its line in ``ARCHS``. Its trainer fits the post-processing on the images it held out before
it commits (:func:`rcnn.tune.fit_model_config`) and names them in its report (``val_images``). Model loading,
``rcnn train/detect/export``, ``--arch`` and the per-architecture help texts follow from the registry. Its training options on the command line
(:mod:`rcnn.cli`) and its settings field in :class:`rcnn.pipeline.PipelineConfig` (``SPEC.pipeline_key``)
are added where the other architectures' are.

Importing this package does not import torch.
"""

from __future__ import annotations

from .fast import SPEC as FAST
from .faster import SPEC as FASTER
from .rcnn import SPEC as RCNN
from .spec import ArchSpec, load

ARCHS: dict[str, ArchSpec] = {spec.name: spec for spec in (FAST, RCNN, FASTER)}  # one line per architecture
# `rcnn pipeline` (and a `rcnn train` of a parsed file) uses Faster R-CNN unless told otherwise. Dev suite
# (bench/quality.py, dev splits, seeds 0 and 1, mAP@0.5, 2026-12-08): fast 0.820 / 0.882 / 0.798 on bccd /
# raccoon / roadsigns (mean 0.833), faster 0.871 / 0.845 / 0.860 (mean 0.859): the two many-object sets well
# above, raccoon 0.037 below, and no selective search at detection (README, docs/faster.md).
DEFAULT_ARCH = "faster"
LEGACY_ARCH = "rcnn"  # a model folder's config.json without "arch" was written before there were others

__all__ = ["ARCHS", "DEFAULT_ARCH", "LEGACY_ARCH", "ArchSpec", "arch_for_input", "get_arch", "load"]


def get_arch(name: str) -> ArchSpec:
    """The registered architecture ``name``; raises ValueError naming the allowed set."""
    try:
        return ARCHS[name]
    except (KeyError, TypeError):
        raise ValueError(f"'arch={name}' is unknown; valid architectures are {', '.join(ARCHS)}") from None


def arch_for_input(is_folder: bool, proposals: bool = False) -> ArchSpec:
    """The architecture `rcnn train` picks without --arch: the default when it trains from this kind of
    input (a folder: a region set; a file: a parsed dataset) and, given ``proposals`` (a file with
    --proposals), takes stored proposals; else the first registered one that does."""
    kind = "regions" if is_folder else "parsed"

    def fits(spec: ArchSpec) -> bool:
        return spec.input == kind and not (proposals and spec.own_proposals)

    default = ARCHS[DEFAULT_ARCH]
    return default if fits(default) else next(s for s in ARCHS.values() if fits(s))
