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
PYTEST_ARGS ?= -n 2

.PHONY: env test demo clean-env print-env

env: $(STAMP)

# Built under a lock so two concurrent `make` runs on one machine never interleave an install;
# the stamp is written last, so an interrupted install is redone from scratch next time.
$(STAMP): requirements/runtime.txt requirements/dev.txt
	@mkdir -p $(SEGTRON_ENV_ROOT)
	@flock $(VENV).lock sh -c '\
	  if [ -f $(STAMP) ]; then exit 0; fi; \
	  echo "[segtron] creating environment $(VENV) (first run on this machine: several minutes)"; \
	  rm -rf $(VENV) && $(PYTHON) -m venv $(VENV) && \
	  $(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements/dev.txt && \
	  touch $(STAMP)'
	@test -f $(STAMP)

test: env
	$(RUN) -m pytest $(PYTEST_ARGS) tests

demo: env
	@echo "[segtron] The CPU quickstart (train + evaluate Mask R-CNN on the synthetic shapes dataset)"
	@echo "[segtron] is not built yet (issue 6). The environment is ready at $(VENV)."
	@exit 1

print-env:
	@echo $(VENV)

clean-env:
	rm -rf $(VENV) $(VENV).lock
