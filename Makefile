# rcnn: set up, test, and run the whole R-CNN pipeline.
#   make demo                      install, then run the pipeline on the built-in synthetic dataset
#   make test                      install, then run the test suite
#   make pipeline DATA=<voc dir> OUT=<dir> [BACKBONE=efficientnet_lite0] [EPOCHS=10] ...
#                                  (without DATA: a synthetic dataset generated in data/synth)
PYTHON   ?= python3
PIP      := $(PYTHON) -m pip
# torch/torchvision are pinned: these builds come from local disk here, an unpinned
# `torch` would pull several GB from the registry.
TORCH    ?= torch==2.14.1 torchvision==0.29.1
STAMP    := .make/installed

DATA     ?= data/synth
OUT      ?= runs/pipeline
BACKBONE ?= efficientnet_lite0
EPOCHS   ?= 10
SIZE     ?= 224
MODE     ?= fast
MAX_SIDE ?= 300
WORKERS  ?= 0
PROPOSALS ?= 2000
DETECT_PROPOSALS ?= 500
NEG_PER_IMAGE ?= 64
THRESHOLD ?= 0.3
EXTRA    ?=

.PHONY: install test test-fast demo pipeline bench clean

$(STAMP): pyproject.toml
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e ".[test]"
	@mkdir -p .make && touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PYTHON) -m pytest -q

test-fast: $(STAMP)
	$(PYTHON) -m pytest -q -m "not slow"

demo: $(STAMP)
	$(PYTHON) -m rcnn.cli demo --out runs/demo

pipeline: $(STAMP)
	@[ "$(DATA)" != data/synth ] || [ -d data/synth/Annotations ] || $(PYTHON) -m rcnn.cli synth data/synth --images 60
	$(PYTHON) -m rcnn.cli pipeline "$(DATA)" --out "$(OUT)" --backbone $(BACKBONE) --epochs $(EPOCHS) \
		--size $(SIZE) --mode $(MODE) --max-side $(MAX_SIDE) --workers $(WORKERS) \
		--max-proposals $(PROPOSALS) --detect-proposals $(DETECT_PROPOSALS) \
		--neg-per-image $(NEG_PER_IMAGE) --threshold $(THRESHOLD) $(EXTRA)

bench: $(STAMP)
	$(PYTHON) bench/core.py
	$(PYTHON) bench/propose.py
	$(PYTHON) bench/crop.py
	$(PYTHON) bench/train.py
	$(PYTHON) bench/detect.py

clean:
	rm -rf .make runs build *.egg-info
