# The two commands of the README: `make demo` and `make test`.  Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SETUP := $(VENV)/.installed

.PHONY: setup demo test lint clean

setup: $(SETUP)

$(SETUP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

# Until the shipped default model exists (engines/demo), the demo builds a tiny random-weight model,
# exports it, and runs it on a real chest radiograph (pydicom-data's RG1_UNCR).  Its output is noise-like:
# it shows the pipeline, not a trained model.
demo: setup
	test -f build/tiny-model/model_index.json || $(VENV)/bin/vald make-tiny-model build/tiny-model
	test -f engines/tiny/manifest.json || $(VENV)/bin/vald export build/tiny-model --out engines/tiny
	$(PY) -m vald_export.samples build/samples/chest_cr.png
	$(VENV)/bin/vald run build/samples/chest_cr.png --engines engines/tiny --out out/demo --steps 50 --strength 0.6

lint: setup
	$(VENV)/bin/ruff check runtime export training tests benchmarks
	$(VENV)/bin/ruff format --check runtime export training tests benchmarks
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest -q

clean:
	rm -rf build out engines/tiny
