# Every target that needs the environment depends on it, so `make run` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
EXPKIT := $(BIN)/expkit
# Sweeps and the seed-000 study train on the shipped sample by default; `make sweep-lr DATA=fashion_mnist`
# uses the full set (Debian: apt-get install dataset-fashion-mnist).
DATA   ?= fashion_mnist_sample
RUNS   ?= runs
CONFIG ?= configs/quickstart.yaml
SET     = --set data.dataset=$(DATA)

.PHONY: install run test test-slow sweep-lr sweep-l2 sweep-l1 sweep-dropout sweep-units sweep-depth sweep-optimizer sweep-batch seed000 bench summaries

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

run: install
	$(EXPKIT) run $(CONFIG) --runs-dir $(RUNS)

test: install
	$(BIN)/python -m pytest -q

test-slow: install
	$(BIN)/python -m pytest -q -m slow

summaries: install
	for f in configs/*.yaml; do echo "== $$f"; $(EXPKIT) summary $$f | tail -4 || exit 1; done

sweep-lr: install
	$(EXPKIT) run configs/sweep_lr.yaml $(SET) --runs-dir $(RUNS)

sweep-l2: install
	$(EXPKIT) run configs/sweep_l2.yaml $(SET) --runs-dir $(RUNS)

sweep-l1: install
	$(EXPKIT) run configs/sweep_l1.yaml $(SET) --runs-dir $(RUNS)

sweep-dropout: install
	$(EXPKIT) run configs/sweep_dropout.yaml $(SET) --runs-dir $(RUNS)

sweep-units: install
	$(EXPKIT) run configs/sweep_units.yaml $(SET) --runs-dir $(RUNS)

sweep-depth: install
	$(EXPKIT) run configs/sweep_depth.yaml $(SET) --runs-dir $(RUNS)

sweep-optimizer: install
	$(EXPKIT) run configs/sweep_optimizer.yaml $(SET) --runs-dir $(RUNS)

sweep-batch: install
	$(EXPKIT) run configs/sweep_batch.yaml $(SET) --runs-dir $(RUNS)

# The whole Fashion-MNIST study of seed 000 into two comparison tables like the seed's: baseline, CNN1 and
# CNN2 at 5 epochs with the "Difference (CNN1 - CNN2)" row; then CNN2 and its three variants at 10 epochs.
SEED000 = $(RUNS)/seed000
seed000: install
	for c in baseline cnn1 cnn2; do $(EXPKIT) run configs/$$c.yaml $(SET) --set train.epochs=5 --runs-dir $(SEED000)/models || exit 1; done
	for c in cnn2 cnn2_leaky cnn2_dropout cnn2_l2; do $(EXPKIT) run configs/$$c.yaml $(SET) --runs-dir $(SEED000)/variants || exit 1; done
	$(EXPKIT) table $(SEED000)/models/baseline $(SEED000)/models/cnn1 $(SEED000)/models/cnn2 --baseline cnn2 -o $(SEED000)/models.md
	$(EXPKIT) table $(SEED000)/variants/cnn2_leaky $(SEED000)/variants/cnn2_dropout $(SEED000)/variants/cnn2_l2 $(SEED000)/variants/cnn2 -o $(SEED000)/variants.md --plot $(SEED000)/variants.png
	cat $(SEED000)/models.md $(SEED000)/variants.md

bench: install
	$(BIN)/python benchmarks/bench_speed.py
