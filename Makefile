# dicomnode: the two commands a new user runs are `make serve` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 11112
HTTP_PORT ?= 8080
DATA_DIR ?= dicomnode-data
PYTEST_ARGS ?=

.PHONY: serve test install lint typecheck clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1" || \
		$(BIN)/python -m pip install --quiet "torch>=2.2,<=2.14.1" "torchvision>=0.17,<=0.29.1"
	$(BIN)/python -m pip install --quiet -e ".[dev,postgres]"
	touch $(STAMP)

install: $(STAMP)

## Run the node on its embedded defaults: SQLite under $(DATA_DIR), bundled default model,
## AE title DICOMNODE on 127.0.0.1:$(PORT), web page, API and metrics on 127.0.0.1:$(HTTP_PORT).
serve: $(STAMP)
	@echo "dicomnode: DICOM AE DICOMNODE on 127.0.0.1:$(PORT); web page, API and metrics on http://127.0.0.1:$(HTTP_PORT)/"
	$(BIN)/dicomnode serve --host 127.0.0.1 --port $(PORT) --http-port $(HTTP_PORT) --data-dir $(DATA_DIR)

## Run the whole test suite (tests whose real peer is missing skip locally, fail under CI=true).
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check dicomnode tests

typecheck: $(STAMP)
	$(BIN)/mypy dicomnode

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache
