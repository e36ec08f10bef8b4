"""The layer interface shared by every layer and activation.

Data layout, everywhere: batch first. Dense data is ``(N, features)``; images are
NHWC ``(N, height, width, channels)``. Parameters are float64 unless a layer is built
with ``dtype="float32"`` (half the memory traffic, twice the BLAS speed).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["Layer", "initialise", "positive_int", "check_init", "check_seed", "float_dtype", "adopt_params"]

INITIALISERS = ("random", "xavier", "he")

Shape = tuple[int, ...]


def check_init(method: Any) -> str:
    """``method`` if it names an initialiser.

    Raises:
        ValueError: it does not.
    """
    if not isinstance(method, str) or method not in INITIALISERS:
        raise ValueError(f"'init={method}' is unknown; valid initialisers are {', '.join(INITIALISERS)}")
    return method


def initialise(shape: tuple[int, ...], fan_in: int, fan_out: int, method: str, rng: np.random.Generator) -> np.ndarray:
    """Weights of ``shape``: ``random`` (randn x 0.01), ``xavier`` (std sqrt(2 / (in + out))) or ``he`` (std sqrt(2 / in))."""
    check_init(method)
    if method == "random":
        std = 0.01
    elif method == "xavier":
        std = np.sqrt(2.0 / (fan_in + fan_out))
    else:
        std = np.sqrt(2.0 / fan_in)
    w = rng.standard_normal(shape)
    w *= std  # in place: one weight-sized buffer, not two
    return w


def positive_int(value: Any, name: str) -> int:
    """``value`` as an ``int`` if it is a positive integer (``bool`` is not).

    Raises:
        ValueError: naming ``name`` and the value.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"'{name}={value!r}' is invalid; give a positive integer")
    return int(value)


def check_seed(seed: Any) -> None:
    """Accept ``None`` or a non-negative integer seed.

    Raises:
        ValueError: anything else.
    """
    if seed is not None and (isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0):
        raise ValueError(f"'seed={seed!r}' is invalid; give a non-negative integer or None")


def float_dtype(dtype: Any) -> np.dtype:
    """``dtype`` as a NumPy floating-point dtype.

    Raises:
        ValueError: it is not one (``int32``, ``object``, an unknown name, ...).
    """
    try:
        dt = np.dtype(dtype)
    except (TypeError, ValueError):
        dt = None
    if dt is None or dt.kind != "f":
        raise ValueError(f"'dtype={dtype!r}' is invalid; give a floating-point dtype such as float32 or float64")
    return dt


def adopt_params(owner: str, params: Mapping[str, np.ndarray], shapes: dict[str, Shape], dtype: np.dtype) -> dict[str, np.ndarray]:
    """Check given parameter arrays against the shapes and dtype a layer expects.

    Args:
        owner: the layer's class name, for messages.
        params: name -> array; used as they are, not copied.
        shapes: name -> expected shape (from ``param_shapes``).
        dtype: the expected dtype of every array.

    Returns:
        The arrays, in the order of ``shapes``.

    Raises:
        ValueError: a name is missing or extra, or an array has another shape or dtype.
    """
    if set(params) != set(shapes):
        raise ValueError(f"{owner} takes parameters {sorted(shapes)}, got {sorted(params)}")
    out = {}
    for k, shape in shapes.items():
        a = params[k]
        if not isinstance(a, np.ndarray) or a.shape != shape or a.dtype != dtype:
            got = f"{a.dtype} array of shape {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
            raise ValueError(f"{owner} parameter {k} must be a {dtype} array of shape {shape}, got a {got}")
        out[k] = a
    return out


class Layer:
    """A differentiable step: ``forward`` caches what ``backward`` needs.

    ``params`` and ``grads`` map names ("W", "b") to arrays of the same shapes;
    layers without parameters leave them empty.
    """

    def __init__(self) -> None:
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}

    def forward(self, x: np.ndarray, training: bool = True) -> np.ndarray:
        raise NotImplementedError

    def backward(self, dout: np.ndarray) -> np.ndarray:
        """Given dL/d(output), store dL/d(params) in ``grads`` and return dL/d(input)."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """The constructor arguments, JSON-serialisable (used by ``Model.save``)."""
        return {}

    @classmethod
    def param_shapes(cls, **config: Any) -> dict[str, Shape]:
        """Check a constructor config and give the parameter shapes it would build, allocating nothing.

        ``Model.load`` calls this for every declared layer before it builds any. Layers
        with constructor arguments override it with their own signature.

        Args:
            **config: the constructor arguments (as ``config()`` writes them).

        Returns:
            Parameter name -> shape; empty for layers without parameters.

        Raises:
            ValueError: a value is invalid (naming it).
            TypeError: an argument is unknown or missing.
        """
        if config:
            raise TypeError(f"{cls.__name__} takes no arguments, got {sorted(config)}")
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"
