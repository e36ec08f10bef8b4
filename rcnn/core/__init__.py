"""rcnn.core: a small from-scratch neural-network library in NumPy.

Data layout, everywhere: batch first; images are NHWC ``(N, height, width, channels)``
and convolution kernels are ``(kh, kw, C_in, C_out)``. Every layer, activation and loss
is checked against PyTorch autograd in float64 (``tests/test_core.py``).
"""

from .activations import Linear, ReLU, Sigmoid, Softmax, Tanh
from .layers import FC, Conv2D, Flatten, Layer, MaxPool2D
from .losses import MSE, BinaryCrossEntropy, Loss, SoftmaxCrossEntropy
from .model import Model
from .optimizers import GD, Adam, Optimizer

__all__ = [
    "Layer", "FC", "Conv2D", "MaxPool2D", "Flatten",
    "Sigmoid", "ReLU", "Tanh", "Linear", "Softmax",
    "Loss", "BinaryCrossEntropy", "MSE", "SoftmaxCrossEntropy",
    "Optimizer", "GD", "Adam",
    "Model",
]
