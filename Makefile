# Every target that needs the environment depends on it, so `make run` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
EXPKIT := $(BIN)/expkit
# Sweeps train on the shipped sample by default (the seed-000 study on the full set); `make sweep-lr DATA=fashion_mnist`
# uses the full set (Debian: apt-get install dataset-fashion-mnist).
DATA   ?= fashion_mnist_sample
RUNS   ?= runs
CONFIG ?= configs/quickstart.yaml
SET     = --set data.dataset=$(DATA)
# pyproject's optional dependencies installed into .venv: the tests use the trackers' libraries, Ray and Jupyter
EXTRAS ?= test,tensorboard,mlflow,ray,notebook,search

.PHONY: install run test test-slow sweep-lr sweep-l2 sweep-l1 sweep-dropout sweep-units sweep-depth sweep-optimizer sweep-batch seed000 bench summaries

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

run: install
	$(EXPKIT) run $(CONFIG) --runs-dir $(RUNS)

# JAX (CPU build) next to TensorFlow: pyproject's `jax` extra, for the tests' second pass and the benchmark.
$(VENV)/.installed-jax: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[jax]'
	touch $@

# The whole suite on TensorFlow, then the core again on JAX (EXPKIT_TEST_BACKEND, tests/conftest.py): build,
# train, run folder, Python API, sweep and resume, and the backend tests. Left out on JAX: concurrency tests
# (several processes on one sweep, SIGTERM), whose subject is the run folder, not the backend.
JAX_TESTS = tests/test_backend.py tests/test_models.py tests/test_train.py tests/test_runner.py \
	tests/test_trials.py tests/test_api.py tests/test_execute.py
JAX_SKIP  = not four_processes and not sigterm
# lint-imports first: the architecture's contracts (pyproject.toml, [tool.importlinter]); a broken one fails the run.
# pytest-xdist runs TEST_JOBS workers, each taking whole test files (--dist loadfile: a file's module fixtures
# are built once); on 2 cores the suite took 710 s with 2 workers (docs/performance.md). TEST_JOBS=0: one process.
TEST_JOBS ?= 2
PYTEST     = $(BIN)/python -m pytest -q -n $(TEST_JOBS) --dist loadfile
test: install $(VENV)/.installed-jax
	$(BIN)/lint-imports --no-cache
	$(PYTEST)
	EXPKIT_TEST_BACKEND=jax $(PYTEST) $(JAX_TESTS) -k '$(JAX_SKIP)'

test-slow: install
	$(BIN)/python -m pytest -q -m slow

summaries: install
	for f in configs/*.yaml; do echo "== $$f"; $(EXPKIT) summary $$f | tail -4 || exit 1; done

# Sweeps train the trials that differ only in numbers (rates, L1/L2, dropout, seeds) as one JAX program where
# that pays (sweep.vectorize: auto; docs/performance.md); VECTORIZE=false trains one trial at a time.
VECTORIZE ?= auto
VEC = --set sweep.vectorize=$(VECTORIZE)
sweep-lr: install $(VENV)/.installed-jax
	$(EXPKIT) run configs/sweep_lr.yaml $(SET) $(VEC) --runs-dir $(RUNS)

sweep-l2: install $(VENV)/.installed-jax
	$(EXPKIT) run configs/sweep_l2.yaml $(SET) $(VEC) --runs-dir $(RUNS)

sweep-l1: install $(VENV)/.installed-jax
	$(EXPKIT) run configs/sweep_l1.yaml $(SET) $(VEC) --runs-dir $(RUNS)

sweep-dropout: install $(VENV)/.installed-jax
	$(EXPKIT) run configs/sweep_dropout.yaml $(SET) $(VEC) --runs-dir $(RUNS)

sweep-units: install $(VENV)/.installed-jax
	$(EXPKIT) run configs/sweep_units.yaml $(SET) $(VEC) --runs-dir $(RUNS)

sweep-depth: install $(VENV)/.installed-jax
	$(EXPKIT) run configs/sweep_depth.yaml $(SET) $(VEC) --runs-dir $(RUNS)

sweep-optimizer: install $(VENV)/.installed-jax
	$(EXPKIT) run configs/sweep_optimizer.yaml $(SET) $(VEC) --runs-dir $(RUNS)

sweep-batch: install $(VENV)/.installed-jax
	$(EXPKIT) run configs/sweep_batch.yaml $(SET) $(VEC) --runs-dir $(RUNS)

# A search (Optuna's TPE over the learning rate, L2 and dropout of seed 001's MLP, successive halving):
# run it again to continue the same search; search.png and parallel.png in runs/search_dropout/.
.PHONY: search-dropout
search-dropout: install $(VENV)/.installed-jax
	$(EXPKIT) run configs/search_dropout.yaml $(SET) $(VEC) --runs-dir $(RUNS)

# One config repeated over seeds (the spread of a result): SEED_CONFIG=configs/cnn1.yaml SWEEP_SEEDS=14,15,16
SEED_CONFIG ?= configs/baseline.yaml
SWEEP_SEEDS ?= 14,15,16,17,18
sweep-seeds: install $(VENV)/.installed-jax
	$(EXPKIT) run $(SEED_CONFIG) $(SET) --set name=$(basename $(notdir $(SEED_CONFIG)))_seeds \
	  --set 'sweep.seeds=[$(SWEEP_SEEDS)]' $(VEC) --runs-dir $(RUNS)

# Seed 000's Fashion-MNIST study as the seed most likely ran it (configs/seed000/: what it leaves unstated,
# resolved by the candidate sweeps there), in two tables like the seed's with its published rows beside ours
# (configs/reference/) and how far each of ours lies from them: baseline, CNN1 and CNN2 at 5 epochs with
# "Difference (cnn1 - cnn2)" computed as labelled (the seed's own row of that name holds CNN2 - CNN1); CNN2
# and its three variants at 10 epochs, each variant minus CNN2. On the full Fashion-MNIST, where the published
# numbers were measured (DATA=fashion_mnist_sample: a quick look, not comparable with them). SEEDS="14 15 16"
# runs every config once per seed (runs/seed000/<table>/seed<N>/<config>/): the tables then give mean ± std
# and each difference in standard deviations (σ). `make seed000-candidates` runs the candidate sweeps.
SEED000 = $(RUNS)/seed000
SEEDS ?= 14
SEED000_MODELS = baseline cnn1 cnn2
SEED000_VARIANTS = cnn2_base cnn2_leaky cnn2_dropout cnn2_l2
CANDIDATES ?= baseline
seed000 seed000-models seed000-variants seed000-candidates: DATA = fashion_mnist
seed000_runs = for s in $(SEEDS); do for c in $(2); do \
	$(EXPKIT) run configs/seed000/$$c.yaml $(SET) --set seed=$$s --runs-dir $(SEED000)/$(1)/seed$$s || exit 1; done; done
seed000_paths = $(foreach c,$(2),$(foreach s,$(SEEDS),$(SEED000)/$(1)/seed$(s)/$(c)))
.PHONY: seed000-models seed000-variants seed000-candidates
seed000: seed000-models seed000-variants
	cat $(SEED000)/models.md $(SEED000)/variants.md
	$(MAKE) --no-print-directory seed000-claims

# The seed's claims (configs/seed000/claims.yaml) judged on the runs above, without running anything:
# holds / reversed / not shown, by the test between the rows over SEEDS (one seed: every claim "not shown");
# "not run" for a claim whose configs have no runs yet (after `make seed000-models` alone, the variants').
.PHONY: seed000-claims
seed000-claims: install
	$(EXPKIT) claims --skip-missing configs/seed000/claims.yaml $(wildcard $(call seed000_paths,models,$(SEED000_MODELS)) \
	  $(call seed000_paths,variants,$(SEED000_VARIANTS)))

seed000-models: install
	$(call seed000_runs,models,$(SEED000_MODELS))
	$(EXPKIT) table $(call seed000_paths,models,$(SEED000_MODELS)) --format csv -o $(SEED000)/models.csv
	$(EXPKIT) table $(call seed000_paths,models,$(SEED000_MODELS)) -o $(SEED000)/models.md \
	  --reference configs/reference/seed000_models.csv --reference-differences \
	  --difference cnn1-cnn2 --difference 'cnn1 (published)-cnn2 (published)'

seed000-variants: install
	$(call seed000_runs,variants,$(SEED000_VARIANTS))
	$(EXPKIT) table $(call seed000_paths,variants,$(SEED000_VARIANTS)) --format csv -o $(SEED000)/variants.csv
	$(EXPKIT) table $(call seed000_paths,variants,$(SEED000_VARIANTS)) -o $(SEED000)/variants.md \
	  --reference configs/reference/seed000_variants.csv --reference-differences \
	  --difference cnn2_leaky-cnn2_base --difference cnn2_dropout-cnn2_base --difference cnn2_l2-cnn2_base \
	  --plot $(SEED000)/variants.png --metric test_accuracy

# The candidate sweeps of configs/seed000/ (CANDIDATES="baseline cnn1 cnn2 variants" for all; the CNN ones
# cost minutes a trial on a small CPU) and one table of them beside the published rows.
seed000-candidates: install
	for c in $(CANDIDATES); do $(EXPKIT) run configs/seed000/candidates_$$c.yaml $(SET) --runs-dir $(SEED000)/candidates || exit 1; done
	$(EXPKIT) table $(SEED000)/candidates -o $(SEED000)/candidates.md --reference-differences \
	  --reference configs/reference/seed000_models.csv --reference configs/reference/seed000_variants.csv
	cat $(SEED000)/candidates.md

# expkit against plain Keras on JAX and on TensorFlow, and expkit on JAX against expkit on TensorFlow
bench: install $(VENV)/.installed-jax
	$(BIN)/python benchmarks/bench_speed.py

# A vectorised sweep against the same sweep one trial at a time (TensorFlow, then JAX): the 10-rate LR sweep
# of the baseline and CNN2 at 3 dropout rates x 3 seeds; full Fashion-MNIST when installed.
# A 27-trial grid vectorised with successive halving against the same grid without: lane-epochs, wall time,
# best val_accuracy (benchmarks/bench_search.py; full Fashion-MNIST when installed).
.PHONY: bench-search
bench-search: install $(VENV)/.installed-jax
	$(BIN)/python benchmarks/bench_search.py

.PHONY: bench-sweep sweep-seeds
bench-sweep: install $(VENV)/.installed-jax
	$(BIN)/python -m pip install --quiet keras-tuner  # the peer of the lr study; the benchmark's only
	$(BIN)/python benchmarks/bench_sweep.py

# What benchmarks/gpu_check.sh needs on the lent GPU machine, which has JAX and PyTorch with CUDA but neither
# TensorFlow nor internet: wheels for Python 3.12 of Keras and the packages it and expkit need that the machine
# lacks (the versions installed here), and Fashion-MNIST's IDX files. Into .device/ (git-ignored), carried there.
DEVICE_WHEELS = keras namex optree pydantic pydantic_core annotated-types typing-inspection typing_extensions
.PHONY: gpu-check-prep gpu-check-cpu
gpu-check-prep: install
	rm -rf .device/wheels && mkdir -p .device/wheels .device/data/fashion-mnist
	$(BIN)/python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .device/wheels \
	  $$($(BIN)/python -m pip list --format=freeze | grep -iE '^($(shell echo $(DEVICE_WHEELS) | tr ' ' '|' | sed 's/[-_]/[-_]/g'))==')
	cp /usr/share/datasets/fashion-mnist/*-ubyte.gz .device/data/fashion-mnist/
	ls .device/wheels .device/data/fashion-mnist

# The same script here, on the CPU at small sizes: proves it runs end to end before it goes to a GPU.
gpu-check-cpu: install $(VENV)/.installed-jax
	GPU_CHECK_CPU=1 PYTHON=$(BIN)/python bash benchmarks/gpu_check.sh

# Seed 000's variants table over three seeds on the GPU machine (benchmarks/gpu_seed000_variants.sh, .device
# carried); here, the same script at small sizes on the CPU.
.PHONY: gpu-seed000-variants-cpu
gpu-seed000-variants-cpu: install $(VENV)/.installed-jax
	GPU_CHECK_CPU=1 PYTHON=$(BIN)/python bash benchmarks/gpu_seed000_variants.sh

# `make sweep-lr` with --jobs 2 against --jobs 1 and through a local Ray instance: speed ratio, same results.csv
.PHONY: bench-parallel
bench-parallel: install
	$(BIN)/python benchmarks/bench_parallel.py --data $(DATA)
