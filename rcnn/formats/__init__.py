"""The dataset formats, one reader module each: :mod:`~rcnn.formats.voc` (Pascal VOC XML),
:mod:`~rcnn.formats.coco` (COCO JSON) and :mod:`~rcnn.formats.yolo` (YOLO txt).

Each reader returns the records of :mod:`rcnn.records` (``Annotation``/``Object``, boxes (x1, y1, x2, y2) in
pixels) as a :data:`~rcnn.formats.common.ReadResult`, checks boxes and images with the same helpers
(:func:`~rcnn.formats.common.checked_box`, :func:`rcnn.safe_read.image_size`), reports per-file problems the
same way and names its splits by one rule (:func:`~rcnn.formats.common.assign_splits`). No reader imports
:mod:`rcnn.parse`; it is the other way round: :func:`rcnn.parse.parse_dataset` picks the reader (see
:func:`rcnn.parse.detect_format`) and finishes the dataset (:func:`~rcnn.formats.common.finish_dataset`).
"""

__all__ = ["coco", "common", "voc", "yolo"]
