# Everyday verbs. Every target installs into .venv first (once; again when setup.cfg or
# constraints.txt change). Variables: DATASET, DATA_ROOT, STEPS, FORMAT, BACKBONES, HEAD,
# MODALITY, FUSION, EPOCHS, SEED, SEEDS.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_DISABLE_TELEMETRY := 1

DATASET ?= synth
STEPS ?= 10
FORMAT ?= zarr
# The synthetic benchmark defaults to the tiny untrained backbones (runs offline in
# seconds); real datasets default to the pretrained hub weights.
BACKBONES ?= $(if $(filter synth,$(DATASET)),tiny,pretrained)
CLIPS_PER_CLASS ?= 30
SEED ?= 0
WORKERS ?= 2
DATA_ROOT ?= data/$(DATASET)
CACHE ?= cache/$(DATASET)-$(BACKBONES)-s$(STEPS).$(if $(filter hdf5,$(FORMAT)),h5,zarr)

.PHONY: install demo test data extract cache-info clean-outputs help bench-extract

help:
	@echo "make demo | test | data DATASET=synth | extract DATASET=... [DATA_ROOT=...]"

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $@

install: $(STAMP)

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

data: $(STAMP)
ifeq ($(DATASET),synth)
	$(PY) cli.py synth --out $(DATA_ROOT) --clips-per-class $(CLIPS_PER_CLASS) --seed $(SEED)
else
	@echo "DATASET=$(DATASET) is not generated here: download it and pass DATA_ROOT=/path/to/it" && exit 2
endif

extract: $(STAMP)
	$(PY) cli.py extract --dataset $(DATASET) --root $(DATA_ROOT) --out $(CACHE) --steps $(STEPS) \
		--format $(FORMAT) --backbones $(BACKBONES) --workers $(WORKERS)

cache-info: $(STAMP)
	$(PY) cli.py cache info $(CACHE)

# The demo: synthetic benchmark -> features -> (stages that have landed).
DEMO_DATA := data/synth-demo
DEMO_CACHE := cache/synth-demo-tiny-s$(STEPS).zarr
demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) cli.py synth --out $(DEMO_DATA) --clips-per-class 16 --seed $(SEED)
	HF_HUB_OFFLINE=1 $(PY) cli.py extract --dataset synth --root $(DEMO_DATA) --out $(DEMO_CACHE) \
		--steps $(STEPS) --backbones tiny --workers $(WORKERS)
	$(PY) cli.py cache info $(DEMO_CACHE)

# Benchmarks (not timed tests): JSON under reports/bench/.
bench-extract: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m extract.bench --out reports/bench/extract.json

clean-outputs:
	rm -rf data cache runs reports
