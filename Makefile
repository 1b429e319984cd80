# The two commands of the README: `make demo` and `make test`.  Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SETUP := $(VENV)/.installed
# The demo's graphs are tracked packed, at half their bytes (export/vald_export/f16pack.py: their fp16-exact fp32
# weights stored as fp16); unpacking needs only python3 and writes a graph only if it hashes to the original.
DEMO_GRAPHS := $(patsubst %.f16pack,%,$(wildcard engines/demo/fp32/*.onnx.f16pack))

.PHONY: setup demo node retrain bench bench-quick bench-attribution bench-eval quantize-demo test lint clean

setup: $(SETUP) $(DEMO_GRAPHS)

$(DEMO_GRAPHS): %: %.f16pack
	$(PYTHON) export/vald_export/f16pack.py unpack $<

$(SETUP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

# The demo runs the shipped model (engines/demo) from a runtime-only environment: no torch, no network.
RUN_VENV ?= .venv-run
RUN_SETUP := $(RUN_VENV)/.installed
DEMO_OUT ?= out/demo

$(RUN_SETUP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(RUN_VENV)
	$(RUN_VENV)/bin/python -m pip install -q --upgrade pip
	$(RUN_VENV)/bin/python -m pip install -q -c constraints.txt -e '.[dicom]'
	touch $@

# The DICOM node's environment (runtime + the node extra, no torch): then `.venv-node/bin/vald serve --config F`.
NODE_VENV ?= .venv-node

node: $(NODE_VENV)/.installed

$(NODE_VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(NODE_VENV)
	$(NODE_VENV)/bin/python -m pip install -q --upgrade pip
	$(NODE_VENV)/bin/python -m pip install -q -c constraints.txt -e '.[node]'
	touch $@

demo: $(RUN_SETUP) $(DEMO_GRAPHS)
	$(RUN_VENV)/bin/vald run engines/demo/samples/consolidation.png engines/demo/samples/*.dcm \
		--engines engines/demo --out $(DEMO_OUT)
	$(RUN_VENV)/bin/vald induce engines/demo/samples/normal.png --mask engines/demo/samples/induce_mask_left_lower_zone.png \
		--prompt "left lower zone consolidation" --engines engines/demo --out $(DEMO_OUT)/induce

# Re-train the demo model from scratch and rebuild engines/demo from it, as shipped: the recipe's stages
# (about 90 minutes on 2 CPU cores), then the UNet continued for 3,000 more steps at half the learning rate
# with other draws (about 40 minutes), then a third stage: the decoder 3,000 more steps (encoder frozen) and
# the UNet 3,000 more at a third of the rate (about 45 minutes); each stage resumes where it stopped.
retrain: setup
	$(PY) -m vald_train build/train/demo
	$(PY) -m vald_train build/train/demo-2 --init-from build/train/demo/model --unet-steps 3000 --unet-lr 0.00015 --decoder-steps 0 --seed 1
	$(PY) -m vald_train build/train/demo-3 --init-from build/train/demo-2/model --unet-steps 3000 --unet-lr 0.0001 \
		--decoder-steps 3000 --decoder-lr 0.0003 --seed 2
	$(PY) -m vald_train.ship build/train/demo-3 --out engines/demo
	$(PY) -m vald_train.classifier --out engines/classifier --data build/train/demo/data.npz

# Latency, memory and accuracy of every backend against the PyTorch reference (JSON, tables and a plot in
# benchmarks/results).  The SD1.5-size model is built and exported into build/ first if absent (~12 min).
bench: setup
	$(PY) benchmarks/latency.py

bench-quick: setup
	$(PY) benchmarks/latency.py --quick

# Attribution quality on held-out phantoms (tables, JSON and the sweep plot in benchmarks/results), with the
# int8 rows from build/demo-int8.
bench-attribution: setup build/demo-int8/int8/unet.xml
	$(PY) benchmarks/attribution.py --engines engines/demo --int8-engines build/demo-int8 --out benchmarks/results

# The demo model's UNet in int8: a copy of engines/demo in build/demo-int8, `vald quantize`d on the
# trajectories of 20 phantoms from seeds no benchmark uses (offset 1500): about 4 minutes on 2 cores.
quantize-demo: build/demo-int8/int8/unet.xml

build/demo-int8/int8/unet.xml: $(SETUP) $(DEMO_GRAPHS) engines/demo/manifest.json
	rm -rf build/demo-int8 build/calib-demo
	mkdir -p build/demo-int8
	cp -r engines/demo/fp32 engines/demo/tokenizer engines/demo/manifest.json build/demo-int8/
	$(PY) -m vald_train.dataset build/calib-demo --per-type 4 --size 128 --offset 1500
	$(VENV)/bin/vald quantize build/demo-int8 build/calib-demo/*/images

# `vald eval` on 200 held-out phantoms (40 per type, PNG in the COVID-19 Radiography Database layout) with the
# shipped phantom classifier; FID too when FID_WEIGHTS names a local pt_inception-2015-12-05-6726825d.pth.
FID_WEIGHTS ?=
bench-eval: setup
	rm -rf build/eval-phantoms
	$(PY) -m vald_train.dataset build/eval-phantoms --per-type 40
	$(VENV)/bin/vald eval build/eval-phantoms --engines engines/demo --classifier engines/classifier/phantom_classifier.onnx \
		--out benchmarks/results/eval-phantoms $(if $(FID_WEIGHTS),--inception $(FID_WEIGHTS),)

# TensorRT's type stubs for mypy (TensorRT itself needs a GPU and NVIDIA's index), kept out of the venv: a stubs-only
# `tensorrt` folder on sys.path would import as an empty namespace package.  Two syntax slips in the generated
# stubs are mended (a parameter named `in`; a required parameter after defaulted ones).
TRT_STUBS := build/typing/tensorrt/__init__.pyi
$(TRT_STUBS): $(SETUP)
	rm -rf build/typing
	$(PY) -m pip install -q --no-deps --target build/typing tensorrt-stubs==10.13.0.35.1
	sed -i -e 's/\bin: list\[/in_: list[/g' \
		-e 's/power: Weights = None, channel_axis: int)/power: Weights = None, channel_axis: int = ...)/' \
		build/typing/tensorrt_bindings/tensorrt.pyi
	touch $@

lint: setup $(TRT_STUBS)
	$(VENV)/bin/ruff check runtime export training tests benchmarks
	$(VENV)/bin/ruff format --check runtime export training tests benchmarks
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest -q

clean:
	rm -rf build out
