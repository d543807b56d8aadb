# Two commands do all the set-up: `make demo` and `make test`. Both create .venv when needed.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)  ## the quickstart study on the built-in digits, then the submission files and the report
	$(BIN)/sweeper run-study quickstart --trials 8
	$(BIN)/sweeper refit-best quickstart --out out/quickstart
	$(BIN)/sweeper report quickstart --out out/quickstart/report.html
	@echo "open out/quickstart/report.html in a browser, or the MLflow UI: $(BIN)/sweeper ui quickstart"

test: $(STAMP)  ## every test, slow ones included (real training on tiny data, real servers); two at a time
	$(BIN)/pytest -q -n 2 --dist worksteal --durations=15

test-fast: $(STAMP)  ## the unit layer: no process, no training, no server (about a minute)
	$(BIN)/pytest -q -m 'not slow' --durations=5

lint: $(STAMP)
	$(BIN)/ruff check sweeper tests bench
	$(BIN)/ruff format --check sweeper tests bench
	$(BIN)/mypy sweeper

clean:
	rm -rf out sweeper.db sweeper.db.lock mlruns/mlflow.db mlruns/mlflow.db.lock mlruns/artifacts checkpoints
