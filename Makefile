# cropseg — the two commands of the README are `make up` and `make test`.
# Everything installs into .venv from the package registries; nothing is needed by hand.
# `make test` as root also installs the Debian tools its tests drive (scripts/test-preflight.sh says
# which before it starts); CONTAINERS=no leaves the container tests out (reported as skipped).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
# setuptools prints a boxed "Editable installation ... folders with the same name" advice for each
# of the seven editable packages: general advice, not a problem of this layout.
PIP    := PYTHONWARNINGS="ignore:Editable installation" $(BIN)/python -m pip
PKGS   := -e 'services/core[onnx,service,s3]' -e model -e services/inference -e services/storage -e services/batch \
	-e services/drift_monitor -e stack
SOURCES := services/core/cropseg_core model/cropseg_model services/inference/cropseg_inference \
	services/storage/cropseg_storage services/drift_monitor/cropseg_drift services/batch/cropseg_batch stack/cropseg_stack \
	benchmarks loadtest
DATA   := var/model
ONNX   := model/artifacts/cropseg-unet.onnx
INFERENCE_PORT ?= 8001
STORAGE_PORT ?= 8002
DRIFT_PORT ?= 8003
PROMETHEUS_PORT ?= 9090
CHECKOV_VERSION := 3.3.30
# Image tag: the chart's appVersion, so the chart's defaults name what `make images` builds.
IMAGE_TAG := $(shell sed -n 's/^appVersion: *"*\([^"]*\)"*/\1/p' charts/cropseg/Chart.yaml)
IMAGES := inference storage drift_monitor batch
# yes: every test runs (a missing engine fails them); no: tests/test_containers.py is left out.
CONTAINERS ?= yes

# Model recipe (see model/README.md). Synthetic seeds are fixed: training 1, selection 2,
# evaluation 3 (never seen in training), reference profile 4, sample gallery 5. Real photos
# (model/data/real, CC BY-SA 4.0): train/ trains, select/ chooses checkpoint and threshold,
# val/ is only ever evaluated. One one-cycle run from the ImageNet-pretrained EfficientNet-Lite0
# encoder: draws synthetic 35 %, EWS 40 %, peanut 25 %. A new model file needs a new version.
REAL   := model/data/real
MODEL_VERSION := 2.0.0
# The drift reference: the real training photos for rgb, synthetic tiles for these (no real NIR data).
NIR_LAYOUTS := cir,rgbn,nir_red,red_nir
TRAIN_TILES ?= 1200
TRAIN_STEPS ?= 1200
ABLATION_STEPS ?= 200
EVAL_TILES ?= 150
TRAINING := --data $(DATA)/train:0.35 --data $(REAL)/ews/train:0.4 --data $(REAL)/peanut/train:0.25 \
	--val $(DATA)/val --val $(REAL)/ews/select --val $(REAL)/peanut/select --val-every 300

.PHONY: up drift experiment demo bench bench-drift-errors bench-images bench-memory bench-peers bench-rasters bench-fields loadtest k8s images test-images test test-fast test-preflight lint typecheck pytest system-deps model model-ablation clean help

help:
	@echo "Run cropseg and its tests (README.md):"
	@echo "make up     set up .venv (first time: about 2 minutes) and run cropseg: web UI :8002, inference :8001,"
	@echo "           drift monitor :8003 (a drift run every 5 min), Prometheus :9090 when installed; data in"
	@echo "           var/data; Ctrl-C stops all"
	@echo "make test   lint, type checks and the whole test suite, about 50 minutes on 2 cores; as root it first"
	@echo "           installs what the tests drive (apt: chromium, prometheus, docker.io, podman, debootstrap, ...),"
	@echo "           starts dockerd and says all of it before it starts (make test-preflight);"
	@echo "           CONTAINERS=no leaves the container tests out (reported as skipped)"
	@echo "make demo   segment one generated tile without a server (var/demo/)"
	@echo "make drift  one drift run over var/data (the CronJob's command)"
	@echo "make clean  remove demo output, test screenshots, local Prometheus and load-test data, tool caches"
	@echo "Deploy (docs/deploy.md):"
	@echo "make images build the four images cropseg/<name>:$(IMAGE_TAG) (inference, storage, drift-monitor, batch);"
	@echo "           installs an engine and a local base image first when missing (scripts/container-engine.sh, root)"
	@echo "make k8s    render the Helm chart into k8s/ (plain manifests for kubectl apply -k)"
	@echo "Model (model/README.md):"
	@echo "make model  regenerate data, retrain, export and evaluate the committed model (under an hour on 2 cores)"
	@echo "make model-ablation  the model card's ablation table: variants of the recipe, scored on real images"
	@echo "Measurements:"
	@echo "make bench  inference, previous model, levers, drift and cold-start benchmarks -> docs/performance.md"
	@echo "make bench-peers  cropseg vs bare FastAPI, LitServe, BentoML, MLServer, KServe, Ray Serve -> docs/performance.md"
	@echo "make bench-memory  peak RSS of each route's largest request, alone and 16 at once -> docs/performance.md"
	@echo "make bench-rasters  time per megapixel and peak RSS of segment-raster on 2k, 8k, 32k rasters -> docs/batch.md"
	@echo "make bench-fields   a 2 GB field uploaded in the browser (cut half way), segmented in the background, mapped -> docs/batch.md (~1 h)"
	@echo "make bench-images  image sizes, start to ready, compose to healthy -> docs/containers.md, README.md"
	@echo "make bench-drift-errors  drift false alarms and detection power on real photos -> docs/drift.md (~40 min)"
	@echo "make experiment  the brightness drift experiment of the course project cropseg grew from (table: docs/drift.md)"
	@echo "make loadtest PROFILE=high  a Locust profile against a fresh local stack (baseline, moderate, high,"
	@echo "           longevity, stress, curve, smoke); reports in reports/locust/"
	@echo "make test-fast  the unit lane: every test not marked slow, on both cores (about a minute)"
	@echo "The parts of make test, each runnable alone:"
	@echo "make test-preflight  what make test takes and installs here; stops a non-root run that could not finish"
	@echo "make lint  make typecheck  make pytest  make system-deps  make test-images"
	@echo "make help   this list"

$(BIN)/python:
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "cropseg needs Python 3.11, found " + sys.version' \
		|| { echo "Python 3.11 is required (set PYTHON=/path/to/python3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade "pip>=24"

# Runtime install: what `make up` needs (no torch).
$(VENV)/.runtime: $(BIN)/python constraints.txt services/core/pyproject.toml model/pyproject.toml \
		services/inference/pyproject.toml services/storage/pyproject.toml services/drift_monitor/pyproject.toml services/batch/pyproject.toml \
		stack/pyproject.toml
	@echo "setup: installing cropseg and its pinned dependencies into .venv (first time: about 2 minutes)"
	$(PIP) install --quiet -c constraints.txt $(PKGS)
	@touch $@

# Development install: the training extra (torch CPU, onnx), the test tools and helm.
$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt scripts/install_helm.py
	@echo "setup: installing the training and test tools: torch (CPU), pytest, Playwright, helm, checkov (first time: about a minute more)"
	$(PIP) install --quiet -c constraints.txt -e 'model[train]' -r requirements-dev.txt
	$(BIN)/python scripts/install_helm.py $(BIN)
	$(PYTHON) -m venv $(VENV)/checkov  # checkov pins its own versions of shared libraries: keep it apart
	$(VENV)/checkov/bin/pip install --quiet "checkov==$(CHECKOV_VERSION)"
	@touch $@

up: $(VENV)/.runtime
	$(BIN)/cropseg-stack up --inference-port $(INFERENCE_PORT) --storage-port $(STORAGE_PORT) \
		--drift-port $(DRIFT_PORT) --prometheus-port $(PROMETHEUS_PORT)

# One drift run over var/data (what the CronJob does); the verdict is printed, the exit is 0 when
# the run worked (the CronJob keeps exit 1 on drift: DRIFT_FAIL_ON_DRIFT).
drift: $(VENV)/.runtime
	$(BIN)/cropseg-drift run --data var/data --no-fail-on-drift

# The brightness experiment of the course project cropseg grew from, on 7,100 generated tiles
# (about 15 minutes on 2 cores; the table in docs/drift.md).
experiment: $(VENV)/.runtime
	$(BIN)/python benchmarks/drift_experiment.py --count 7100 --write docs/drift.md

demo: $(VENV)/.runtime
	$(BIN)/cropseg-model demo --out var/demo

# False alarms and detection power of the drift check on real photos (docs/drift.md, about 40 minutes).
bench-drift-errors: $(VENV)/.dev
	$(BIN)/python benchmarks/drift_error_rates.py --write docs/drift.md

bench: $(VENV)/.dev
	$(BIN)/python benchmarks/inference.py --write docs/performance.md
	$(BIN)/python benchmarks/previous_model.py --write docs/performance.md
	$(BIN)/python benchmarks/levers.py --write docs/performance.md
	$(BIN)/python benchmarks/drift.py --write docs/performance.md
	$(BIN)/python benchmarks/cold_start.py --write docs/performance.md

# Peak RSS of each route's largest request against the chart's memory limits (docs/performance.md).
# Each peer in a virtualenv of its own under var/peers/ (built from PyPI on the first run, ~5 min).
bench-peers: $(VENV)/.dev
	$(BIN)/python benchmarks/peers/peers.py setup
	$(BIN)/python benchmarks/peers/bench.py --write docs/performance.md

bench-memory: $(VENV)/.dev
	$(BIN)/python benchmarks/memory.py --write docs/performance.md

# Image sizes, start to ready and compose to healthy (docs/containers.md); COLD=1 also times
# builds without the cache.
bench-rasters: $(VENV)/.runtime
	$(BIN)/python benchmarks/rasters.py --write docs/batch.md

bench-fields: $(VENV)/.dev system-deps
	$(BIN)/python benchmarks/fields.py --write docs/batch.md

bench-images: images
	$(BIN)/python benchmarks/containers.py --write docs/containers.md --readme README.md $(if $(COLD),--cold)

PROFILE ?= smoke
loadtest: $(VENV)/.dev
	$(BIN)/python loadtest/run.py $(PROFILE)

# Plain manifests for `kubectl apply -k k8s/`: the chart rendered with its default values.
k8s: $(VENV)/.dev
	$(BIN)/helm template cropseg charts/cropseg --namespace cropseg --skip-tests > k8s/cropseg.yaml

# The engine and base image first (idempotent, seconds when present); the legacy builder needs no
# registry for a frontend. One Dockerfile, SERVICE the folder under services/. Dependency layers are
# cached: a code edit rebuilds in seconds.
images: $(VENV)/.runtime
	@bash scripts/container-engine.sh
	@for service in $(IMAGES); do \
		name=cropseg/$$(echo $$service | tr _ -):$(IMAGE_TAG); start=$$(date +%s); \
		echo "images: building $$name"; \
		DOCKER_BUILDKIT=0 docker build --quiet -f services/Dockerfile --build-arg SERVICE=$$service \
			-t $$name . >/dev/null || exit 1; \
		echo "images: $$name $$(docker image inspect -f '{{.Size}}' $$name | awk '{printf "%.0f MB", $$1/1e6}') in $$(( $$(date +%s) - start )) s"; \
	done

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.dev
	$(BIN)/mypy $(SOURCES)

# Debian packages the tests drive (Chromium); installs what is missing when root or sudo allows.
system-deps:
	@bash scripts/system-deps.sh

# The images tests/test_containers.py runs, built from this checkout before the tests (as root an
# engine is installed when missing); CONTAINERS=no leaves them out, and those tests skip.
test-images: $(VENV)/.runtime
	@if [ "$(CONTAINERS)" = no ]; then echo "test-images: left out (CONTAINERS=no)"; \
	else $(MAKE) --no-print-directory images; fi

pytest: $(VENV)/.dev system-deps test-images
	CROPSEG_CONTAINERS=$(CONTAINERS) $(BIN)/python -m pytest --cov --cov-report=term $(PYTEST_ARGS)

# Says the time and every change to this host first; without root, stops before anything runs when
# the container tests could not run (one line: what is missing, and CONTAINERS=no).
test-preflight:
	@CONTAINERS=$(CONTAINERS) bash scripts/test-preflight.sh

test: test-preflight
	@$(MAKE) --no-print-directory lint typecheck pytest

# The unit lane: the tests not marked slow (no browser, container, training, load test or long-lived
# server), on both cores, with bytecode kept (a host that sets PYTHONDONTWRITEBYTECODE recompiles every
# module on each run: 31 s of collection instead of 16). About 55 s on 2 cores; make test runs them too.
test-fast: $(VENV)/.dev
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -m pytest -m "not slow" -n 2 -q -p no:cacheprovider $(PYTEST_ARGS)

# The synthetic sets, generated once per tile count (seeds fixed: the same tiles every time).
$(DATA)/.sets-$(TRAIN_TILES): $(VENV)/.dev model/cropseg_model/synth.py
	rm -rf $(DATA)/train $(DATA)/val $(DATA)/eval $(DATA)/reference $(DATA)/.sets-*  # exactly these tiles
	$(BIN)/cropseg-model generate --count $(TRAIN_TILES) --seed 1 --out $(DATA)/train
	$(BIN)/cropseg-model generate --count 100 --seed 2 --out $(DATA)/val
	$(BIN)/cropseg-model generate --count $(EVAL_TILES) --seed 3 --out $(DATA)/eval
	$(BIN)/cropseg-model generate --count 200 --seed 4 --out $(DATA)/reference
	@touch $@

model: $(DATA)/.sets-$(TRAIN_TILES)
	rm -rf model/artifacts/samples  # the storage service's sample gallery, with labels, in their layouts
	$(BIN)/cropseg-model generate --count 12 --seed 5 --out model/artifacts/samples --layout-files
	$(BIN)/cropseg-model train $(TRAINING) --out $(DATA)/net.pt --steps $(TRAIN_STEPS)
	$(BIN)/cropseg-model export --checkpoint $(DATA)/net.pt --out $(ONNX) --version $(MODEL_VERSION) \
		--report $(DATA)/export.json --calibrate $(DATA)/val --calibrate $(REAL)/ews/select \
		--calibrate $(REAL)/peanut/select
	$(BIN)/cropseg-model evaluate --model $(ONNX) --data $(REAL)/ews/val --data $(REAL)/peanut/val \
		--synthetic $(DATA)/eval --scales 0.25,0.375,0.5,0.75,1 --enlarge 2,4 --leaf-px 32 --out $(DATA)/eval.json
	$(BIN)/cropseg-model profile --model $(ONNX) --data $(REAL)/ews/train --data $(REAL)/peanut/train \
		--data $(DATA)/reference:$(NIR_LAYOUTS) --calibrate $(REAL)/ews/select --calibrate $(REAL)/peanut/select \
		--check $(REAL)/ews/val --check $(REAL)/peanut/val
	$(BIN)/cropseg-model card --train-report $(DATA)/net.json --export-report $(DATA)/export.json \
		--eval-report $(DATA)/eval.json

# What each part of the recipe is worth (the model card's ablation table): variants of the same
# recipe at ABLATION_STEPS steps each, scored through the pipeline on the real validation splits.
model-ablation: $(DATA)/.sets-$(TRAIN_TILES)
	$(BIN)/cropseg-model ablate $(TRAINING) --steps $(ABLATION_STEPS) --real-val $(REAL)/ews/val \
		--real-val $(REAL)/peanut/val --synthetic $(DATA)/eval --out model/artifacts/ablation.json

clean:
	rm -rf var/demo var/test-artifacts var/prometheus var/loadtest .pytest_cache .mypy_cache .ruff_cache .coverage
