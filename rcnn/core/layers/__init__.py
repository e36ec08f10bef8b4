"""Layers of :mod:`rcnn.core`."""

from .base import Layer, initialise
from .conv import Conv2D
from .dense import FC
from .flatten import Flatten
from .pool import MaxPool2D

__all__ = ["Layer", "initialise", "FC", "Conv2D", "MaxPool2D", "Flatten"]
