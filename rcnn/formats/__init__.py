"""Readers of the dataset formats other than Pascal VOC (which :mod:`rcnn.parse` reads itself).

Each reader returns the records of :mod:`rcnn.parse` (``Annotation``/``Object``, boxes (x1, y1, x2, y2) in
pixels), checks boxes and images with the same helpers as the VOC reader (``checked_box``, ``image_size``) and
reports per-file problems the same way; :func:`rcnn.parse.parse_dataset` picks the reader (see
:func:`rcnn.parse.detect_format`).
"""

__all__ = ["coco", "yolo"]
