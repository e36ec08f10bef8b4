"""``python -m rcnn.core.resnet train|separability|make-data``."""

from .cli import main

if __name__ == "__main__":
    main(prog_name="python -m rcnn.core.resnet")
