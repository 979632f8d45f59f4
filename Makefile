# segtron: two entry points on a fresh machine.
#   make demo   create the environment (first time only), then train + evaluate the CPU quickstart
#   make test   create the environment (first time only), then run the whole test suite
#
# The environment is a virtualenv kept OUTSIDE the clone, one per machine and per set of pinned
# requirements: $(SEGTRON_ENV_ROOT)/<hash of requirements/*.txt and the Python version>. Clean
# clones (CI) reuse it; editing requirements/ creates a new one. torch alone is ~5 GB.

PYTHON ?= python3
SEGTRON_ENV_ROOT ?= $(HOME)/.cache/segtron/envs
REQ_HASH := $(shell (cat requirements/*.txt; $(PYTHON) -c 'import sys; print(sys.version)') | sha256sum | cut -c1-16)
VENV := $(SEGTRON_ENV_ROOT)/$(REQ_HASH)
PY := $(VENV)/bin/python
STAMP := $(VENV)/.segtron-env-complete
# The clone itself is imported from its source tree, so several clones can share one environment.
RUN := PYTHONPATH=$(CURDIR) $(PY)
# worksteal: an idle worker takes queued tests from the busy one (the suite has a few long
# end-to-end tests, which would otherwise leave one core idle at the end).
PYTEST_ARGS ?= -n 2 --dist worksteal

.PHONY: env test demo demo-run clean-env print-env

env: $(STAMP)

# Built under a lock so two concurrent `make` runs on one machine never interleave an install;
# the stamp is written last, so an interrupted install is redone from scratch next time.
$(STAMP): requirements/runtime.txt requirements/dev.txt requirements/test-reference.txt
	@mkdir -p $(SEGTRON_ENV_ROOT)
	@flock $(VENV).lock sh -c '\
	  if [ -f $(STAMP) ]; then exit 0; fi; \
	  echo "[segtron] creating environment $(VENV) (first run on this machine: several minutes)"; \
	  rm -rf $(VENV) && $(PYTHON) -m venv $(VENV) && \
	  $(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements/dev.txt && \
	  $(VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps -r requirements/test-reference.txt && \
	  touch $(STAMP)'
	@test -f $(STAMP)

test: env
	$(RUN) -m pytest $(PYTEST_ARGS) tests

# The CPU quickstart: train Mask R-CNN from scratch on the synthetic shapes dataset (generated on
# first use), evaluate it on shapes_val, then draw the training curves and predictions.
DEMO_CONFIG ?= configs/Shapes/mask_rcnn_R_18_FPN_demo.yaml
DEMO_DIR ?= output/shapes_demo
# Extra KEY VALUE overrides for train_net.py; quote values a shell would read, e.g.
# make demo DEMO_ARGS="SOLVER.MAX_ITER 100 INPUT.MIN_SIZE_TRAIN '(128,)'"
DEMO_ARGS ?=

demo: env
	@$(MAKE) --no-print-directory demo-run

# On a machine with a CUDA GPU the demo trains there with AMP (tools/demo_device.py prints the
# overrides; nothing on a CPU-only machine). Expanded only when demo-run runs.
DEMO_DEVICE_ARGS = $(shell $(RUN) tools/demo_device.py)

# The pictures show the run's first test dataset, read from the config the run saved.
FIRST_TEST_DATASET := 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["DATASETS"]["TEST"][0])'

# The demo's steps alone, in an existing environment (tests run it with a few iterations).
demo-run:
	@echo "[segtron] training $(DEMO_CONFIG) into $(DEMO_DIR) (8-10 minutes on 2 CPU cores)"
	$(RUN) train_net.py --config-file $(DEMO_CONFIG) OUTPUT_DIR $(DEMO_DIR) $(DEMO_DEVICE_ARGS) $(DEMO_ARGS)
	$(RUN) tools/compare_runs.py $(DEMO_DIR) --plot $(DEMO_DIR)/curves.png
	$(RUN) tools/visualize_json_results.py --dataset "$$($(RUN) -c $(FIRST_TEST_DATASET) $(DEMO_DIR)/config.yaml)" \
	  --conf-threshold 0.5 --input $(DEMO_DIR)/inference/coco_instances_results.json \
	  --grid $(DEMO_DIR)/predictions.png
	@echo "[segtron] done. Look at $(DEMO_DIR)/predictions.png and $(DEMO_DIR)/curves.png;"
	@echo "[segtron] the model is $(DEMO_DIR)/model_final.pth, the log $(DEMO_DIR)/log.txt."

print-env:
	@echo $(VENV)

clean-env:
	rm -rf $(VENV) $(VENV).lock
