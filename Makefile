# Two entry points on a fresh clone: `make demo` and `make test`.
# Both create ./.venv and install autoseg into it. Override the torch pin for GPU builds:
#   make test TORCH="torch==2.5.1"
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test demo bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest tests

demo: $(STAMP)
	bash bench/demo.sh $(BIN)

clean:
	rm -rf $(VENV) demo_workspace
