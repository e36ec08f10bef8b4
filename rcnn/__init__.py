"""rcnn: an R-CNN object-detection toolkit for Pascal VOC datasets.

Stages, one module each: :mod:`rcnn.parse` → :mod:`rcnn.propose` → :mod:`rcnn.crop`
→ :mod:`rcnn.train` → :mod:`rcnn.detect` → :mod:`rcnn.evaluate`; :mod:`rcnn.pipeline`
runs them all. :mod:`rcnn.core` is a separate from-scratch NumPy network library.

Box convention everywhere: ``(x1, y1, x2, y2)`` in pixels, float, ``0 <= x1 < x2``.
"""

__version__ = "0.1.0"
