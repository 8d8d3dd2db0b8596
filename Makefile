# The README's two commands: `make sweep` (the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export MLFLOW_DISABLE_TELEMETRY ?= true

.PHONY: install sweep report test bench lint gpu-wheels

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: an unpinned torch pulls a newer multi-GB build
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(STAMP)

# The main job: the embedded default study (continued with --resume if it already exists).
sweep: install
	$(PY) -m study.sweep $$(test -d sweeps/default/tune && echo --resume) $(SWEEP_ARGS)

# The default study's report: reports/default/report.html (figures in reports/default/figures).
# Every trial that finished its training logged its inference dials already; the report reads
# MLflow only (python -m study.dials measures a trial's dials at another grid).
report: install
	$(PY) -m analysis.report --tracking-uri sqlite:///mlflow.db --experiment textcraftor-study \
		--out reports/default

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

bench: install
	$(PY) -m textcraftor.bench --json

# The wheels the GPU machine lacks (diffusers, open_clip, torchvision, ...), for Python 3.12 there:
# carried in .gpu-wheels/ to `python3 -m textcraftor.gpu_check` (README: On GPUs).
gpu-wheels: install
	$(PY) -m textcraftor.gpu_check --prepare-wheels .gpu-wheels

lint: install
	$(PY) -m ruff check textcraftor study analysis tests
