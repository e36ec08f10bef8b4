"""rcnn.core.resnet: the PyTorch half of rcnn.core, a residual-network study with per-layer separability.

``MyResNet`` (one constructor setting per variant: normalisation, shortcut, parallel paths) is trained on
32×32 colour images (CIFAR-10's binary distribution or an ImageFolder tree), then every layer's output on
a class-balanced subset is scored with SI (nearest other sample has the same label) and CSI (nearest
class centre is the own class's). Command line: ``python -m rcnn.core.resnet --help``.
"""

from .data import ImageSplit, StudyData, load_cifar10, load_data, load_imagefolder, make_digits, read_cifar_batch
from .model import NORMS, PATHS, SHORTCUTS, STUDY_VARIANTS, MyResNet, ResidualBlock, ResNetConfig, parse_variant
from .separability import (LayerSeparability, balanced_subset, class_separability_index, layer_features,
                           layer_separability, nearest_other, separability_index)
from .study import SeparabilityConfig, format_table, load_separability, plot_comparison, plot_layers, run_separability
from .train import StudyReport, StudyTrainConfig, load_run, train_study

__all__ = [
    "MyResNet", "ResidualBlock", "ResNetConfig", "NORMS", "SHORTCUTS", "PATHS", "STUDY_VARIANTS", "parse_variant",
    "ImageSplit", "StudyData", "read_cifar_batch", "load_cifar10", "load_imagefolder", "load_data", "make_digits",
    "LayerSeparability", "separability_index", "class_separability_index", "nearest_other", "balanced_subset",
    "layer_features", "layer_separability",
    "StudyTrainConfig", "StudyReport", "train_study", "load_run",
    "SeparabilityConfig", "run_separability", "load_separability", "plot_layers", "plot_comparison", "format_table",
]
