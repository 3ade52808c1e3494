# The two commands a fresh clone needs:  `make demo`  and  `make test`.
# Both create (or reuse) the virtual environment in .venv and install with constraints.txt.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint chromium clean

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

# The report's browser test renders in Debian's chromium: installed here when it is missing and
# we are root with apt-get. Otherwise nothing fails: that one test skips and names the package.
CHROMIUM := /usr/bin/chromium
CHROMIUM_LOG := $${TMPDIR:-/tmp}/mindvideo-chromium-install.log

chromium:
	@if [ ! -x $(CHROMIUM) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's chromium (apt-get) for the report's browser test"; \
		if ! { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
				--no-install-recommends chromium; } >$(CHROMIUM_LOG) 2>&1; then \
			echo "could not install chromium (see $(CHROMIUM_LOG)): the browser test will skip"; \
		fi; \
	fi

# Tests run in parallel (one worker per core), slow ones first; workers steal queued tests.
test: lint chromium
	$(BIN)/python -m pytest -n auto --dist worksteal --durations=25

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
