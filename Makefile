# The commands people type. `make run` and `make test` each set everything up first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch and torchvision must come as a matching pair; override for another platform/CUDA build.
TORCH ?= torch==2.14.1 torchvision==0.29.1
PIPELINE ?= pipelines/quickstart.yaml

.PHONY: setup data run test lint format docs clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev,timm]'
	touch $@

# Fashion-MNIST offline from Debian's package; elsewhere torchvision downloads it on first use.
data:
	@if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then \
		echo "Fashion-MNIST: /usr/share/datasets/fashion-mnist"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
		|| (apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null) \
		|| echo "apt-get could not install dataset-fashion-mnist; torchvision will download it"; \
	elif command -v sudo >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then \
		sudo apt-get install -y -q dataset-fashion-mnist || echo "torchvision will download it"; \
	else \
		echo "No Debian package manager: torchvision downloads Fashion-MNIST into data/ on first use"; \
	fi

run: setup data
	$(BIN)/compress run $(PIPELINE)

lint: setup
	$(BIN)/ruff check compress tests benchmarks
	$(BIN)/ruff format --check compress tests benchmarks
	$(BIN)/lint-imports  # the layers contract in pyproject.toml: imports point one way
	$(BIN)/hadolint docker/Dockerfile.cpu docker/Dockerfile.gpu

test: setup data lint
	$(BIN)/pytest -q -n auto --dist loadfile  # one worker per core; a file's tests share a worker

format: setup
	$(BIN)/ruff format compress tests benchmarks
	$(BIN)/ruff check --fix compress tests benchmarks

# The pipeline file reference, generated from the config models: every key, type, default, meaning.
docs: setup
	$(BIN)/compress config-reference

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache .import_linter_cache
