# rcnn: set up, test, and run the whole R-CNN pipeline.
#   make demo                      install, then run the pipeline on the built-in synthetic dataset
#   make test                      install, then run the test suite
#   make pipeline DATA=<voc dir> OUT=<dir> [ARCH=fast|faster|rcnn|rcnn,fast,faster] [BACKBONE=...] [EPOCHS=...] [EXTRA="--no-hflip ..."]
#                                  (settings not given keep the defaults `rcnn pipeline --help` shows)
#                                  (without DATA: a synthetic dataset generated in data/synth)
PYTHON   ?= python3
PIP      := $(PYTHON) -m pip
# torch/torchvision are pinned: these builds come from local disk here, an unpinned
# `torch` would pull several GB from the registry.
TORCH    ?= torch==2.14.1 torchvision==0.29.1
STAMP    := .make/installed

DATA     ?= data/synth
OUT      ?= runs/pipeline
# Pipeline settings have their defaults in the library (`rcnn pipeline --help` lists them). A variable
# below is forwarded only when given on the make command line (make pipeline BACKBONE=mobilenet_v2),
# never from the environment; EXTRA passes any other option through.
given = $(if $(and $(filter command line,$(origin $(1))),$($(1))),$(2) $($(1)))
PIPELINE_FLAGS = $(call given,ARCH,--arch) $(call given,BACKBONE,--backbone) $(call given,EPOCHS,--epochs) $(call given,SIZE,--size) \
	$(call given,MODE,--mode) $(call given,MAX_SIDE,--max-side) $(call given,WORKERS,--workers) \
	$(call given,PROPOSALS,--max-proposals) $(call given,DETECT_PROPOSALS,--detect-proposals) \
	$(call given,NEG_PER_IMAGE,--neg-per-image) $(call given,THRESHOLD,--threshold)
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
	$(PYTHON) -m rcnn.cli pipeline "$(DATA)" --out "$(OUT)" $(strip $(PIPELINE_FLAGS)) $(EXTRA)

bench: $(STAMP)
	$(PYTHON) bench/core.py
	$(PYTHON) bench/propose.py
	$(PYTHON) bench/crop.py
	$(PYTHON) bench/train.py
	$(PYTHON) bench/detect.py
	$(PYTHON) bench/scale.py
	$(PYTHON) bench/separability.py
	$(PYTHON) bench/resnet.py

clean:
	rm -rf .make runs build *.egg-info
