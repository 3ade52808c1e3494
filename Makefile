# The two commands a fresh clone needs:  `make demo`  and  `make test`.
# Both create (or reuse) the virtual environment in .venv and install with constraints.txt.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/mindvideo demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

# Tests run in parallel (one worker per core), slow ones first; workers steal queued tests.
test: lint
	$(BIN)/python -m pytest -n auto --dist worksteal

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
