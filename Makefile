# Quick start: `make demo` runs a local network; `make test` runs the whole suite.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BROWSER := $(VENV)/.chromium

.PHONY: test demo bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# The browser tests drive Debian's chromium (never a downloaded browser build).
$(BROWSER): $(STAMP)
	@command -v chromium >/dev/null || { echo "installing chromium for the browser tests"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || { echo "could not install chromium: run as root, or apt-get install chromium"; exit 1; }; }
	touch $(BROWSER)

test: $(STAMP) $(BROWSER)
	$(PY) -m pytest -q -p no:cacheprovider

demo: $(STAMP)
	$(VENV)/bin/cairn demo

bench: $(STAMP)
	$(PY) -m tools.bench.chain
	$(PY) -m tools.bench.storage
	$(PY) -m tools.bench.network
	$(PY) -m tools.bench.targets --quick

clean:
	rm -rf $(VENV) demo-data test-artifacts
