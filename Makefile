# The two commands of the README: `make demo` and `make test`. Both build the
# project-local virtualenv first if it is missing or out of date; a second run skips
# installation in seconds.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
# gcc-arm-none-eabi: the export tests compile the TFLite Micro bundle (model_data.cc) for Cortex-M
APT_PACKAGES := mosquitto dataset-fashion-mnist gcc-arm-none-eabi
EXTRAS := export,broker,plot,test

.PHONY: demo test venv system-packages clean

venv: $(STAMP)

# Debian packages the suite and the demo need; installed with apt-get when root.
system-packages:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing) >/dev/null \
	      || { echo "apt-get install$$missing failed"; exit 1; }; \
	  else \
	    echo "warning: Debian packages missing:$$missing (not root: run 'sudo apt-get install$$missing'); tests that need them will skip"; \
	  fi; \
	fi

# torch==2.13.0 first: this machine carries its CPU wheel, and anything that depends on
# torch must then not pull the CUDA build from the registry.
$(STAMP): pyproject.toml | system-packages
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[$(EXTRAS)]"
	@touch $(STAMP)

# an 8-node fleet over the embedded broker, then shrink + export + a verdict per device
demo: system-packages $(STAMP)
	$(PY) tools/demo.py

# a second, runtime-only environment (tflite-runtime + numpy, no torch): the export tests
# show that exported .tflite files run on older devices' interpreter too
TFLRT := .venv-tflite-runtime
$(TFLRT)/.installed:
	@test -x $(TFLRT)/bin/python || $(PYTHON) -m venv $(TFLRT)
	$(TFLRT)/bin/python -m pip install -q "tflite-runtime==2.14.0" "numpy<2"
	@touch $@

test: system-packages $(STAMP) $(TFLRT)/.installed
	DSLTH_TFLITE_RUNTIME_PYTHON=$(CURDIR)/$(TFLRT)/bin/python $(PY) -m pytest -q --durations=15

clean:
	rm -rf $(VENV) $(TFLRT) build dist *.egg-info .pytest_cache .hypothesis
