# Quick start: `make demo` runs a local network; `make test` runs the whole suite.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

demo: $(STAMP)
	$(VENV)/bin/cairn demo

bench: $(STAMP)
	$(PY) -m tools.bench.chain
	$(PY) -m tools.bench.storage

clean:
	rm -rf $(VENV) demo-data
