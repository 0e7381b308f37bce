# Two commands from a fresh clone: `make demo` and `make test`. Each sets up what is missing, once:
# the virtual environment, the package (editable, with its test extras) and the JS bundle.
SHELL := /bin/bash
VENV := .venv
PYTHON := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
NODE_MODULES := js/node_modules/.package-lock.json
# esbuild writes every bundle in one run; the first stands for them all.
BUNDLE := cnnviz_widgets/static/scatter3d.js
JS_SOURCES := $(wildcard js/src/*.js js/src/*.css)

.PHONY: setup demo test bench

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

test: setup
	$(PYTHON) -m pytest --nbval-lax tests notebooks --ignore=tests/browser/notebooks

bench: setup
	$(PYTHON) bench/bench_methods.py
	$(PYTHON) bench/bench_data.py
