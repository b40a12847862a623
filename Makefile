# The two commands of the README:
#   make demo   - set up (virtualenv + install) if needed, then run the embedded demo
#   make test   - set up if needed (the Kafka jars too), then ruff, mypy and the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO_EVENTS ?= 200000

.PHONY: demo run test lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] in ((3, 11), (3, 12)), "Python 3.11 or 3.12 is required (set PYTHON=...)"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

# A bounded, resumable run of the embedded default: generator in, ./out/*.jsonl out,
# state in ./state, recovery snapshots in ./recovery. Run it again after a crash to resume.
demo: $(BIN)/.installed
	FRAUD_EVENTS=$${FRAUD_EVENTS:-$(DEMO_EVENTS)} FRAUD_RECOVERY_DIR=$${FRAUD_RECOVERY_DIR:-recovery} \
		$(BIN)/python -m bytewax_fraud

# The same job, unbounded: runs until stopped (Ctrl-C), resumable.
run: $(BIN)/.installed
	FRAUD_RECOVERY_DIR=$${FRAUD_RECOVERY_DIR:-recovery} $(BIN)/python -m bytewax_fraud

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/hadolint Dockerfile

# The Kafka tests run on an Apache Kafka node from Maven Central's jars (cached; a no-op once there).
test: lint
	.ci/install-kafka
	$(BIN)/python -m pytest -q

# The benchmark (docs/benchmarks.md): installs the plot's extra, writes the JSON and the PNG.
bench: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python -m bytewax_fraud.tools.bench --json bench-out/bench.json --plot docs/bench.png

clean:
	rm -rf state out recovery bench-out .pytest_cache .mypy_cache .ruff_cache
