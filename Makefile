# Two commands from a fresh clone: `make demo` and `make test` (`make test-fast` while working). Each sets up
# what is missing, once: the virtual environment, the package (editable, with its test extras) and the JS bundle.
SHELL := /bin/bash
VENV := .venv
PYTHON := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
NODE_MODULES := js/node_modules/.package-lock.json
# esbuild writes every bundle in one run; the first stands for them all.
BUNDLE := cnnviz_widgets/static/scatter3d.js
JS_SOURCES := $(wildcard js/src/*.js js/src/*.css)

CHROMIUM := /usr/bin/chromium

.PHONY: setup demo test test-fast js-test bench

setup: $(INSTALLED) $(BUNDLE)

$(PYTHON):
	python3 -m venv $(VENV)

$(NODE_MODULES): js/package.json js/package-lock.json
	cd js && npm ci --no-audit --no-fund
	touch $@

$(BUNDLE): $(NODE_MODULES) $(JS_SOURCES)
	cd js && npm run build

# The bundle is built before the editable install so that the build hook finds it and skips npm.
$(INSTALLED): pyproject.toml | $(PYTHON) $(BUNDLE)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e ".[test]"
	touch $@

# JupyterLab refuses to run as root unless told; containers often are root.
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root)

demo: setup
	$(VENV)/bin/jupyter lab $(ROOT_FLAG) notebooks/tour.ipynb

# The browser tests drive Debian's Chromium and fail without it (they never skip): on Debian as root it is
# installed here; anywhere else make stops and says what to run.
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ] && grep -qx 'ID=debian' /etc/os-release; then \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; \
	else \
		echo "$(CHROMIUM) is missing; the browser tests need it. Install it with:" >&2; \
		echo "    sudo apt-get update && sudo apt-get install -y chromium" >&2; \
		echo "(Debian's package; elsewhere, install Chromium so that it runs as $(CHROMIUM))" >&2; \
		exit 1; \
	fi
	@test -x $@ || { echo "chromium was installed but $@ is still missing" >&2; exit 1; }

# The JS unit tests need no package: node's own test runner.
js-test:
	cd js && npm test --silent

# The whole suite, as CI runs it; the 20 slowest tests are listed at the end.
test: setup $(CHROMIUM) js-test
	$(PYTHON) -m pytest --nbval-lax tests notebooks --ignore=tests/browser/notebooks --durations=20

# The unit and widget tests, less the browser and the tests marked slow (model families, t-SNE and UMAP fits,
# the long isolation run): minutes, for while you work.
test-fast: setup
	$(PYTHON) -m pytest tests -m "not browser and not slow"

bench: setup $(CHROMIUM)
	$(PYTHON) bench/bench_methods.py
	$(PYTHON) bench/bench_data.py
	$(PYTHON) bench/bench_browser.py
	$(PYTHON) bench/bench_trust.py
	$(PYTHON) bench/bench_projector.py
	$(PYTHON) bench/bench_test_set.py
	$(PYTHON) bench/bench_session.py
	$(PYTHON) bench/bench_diagnosis.py
	$(PYTHON) bench/bench_comparison.py
	$(PYTHON) bench/bench_scan.py
