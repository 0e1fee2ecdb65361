# Two commands do everything on a fresh machine: `make train` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SIMS_VENV := .venv-sims
SIMS_STAMP := $(SIMS_VENV)/.installed
export MUJOCO_GL ?= egl
export HF_HUB_OFFLINE ?= 1

.PHONY: venv train test test-slow sims test-backends test-notebooks browser-deps test-browser lint

# The venv is rebuilt when a pyproject.toml changes (the stamp is older than it).
# torch first, from the exact CPU wheel, so nothing pulls a multi-GB CUDA build.
# The simulator (sim/, distribution lift-sim) and vla-rl install together, both editable.
$(STAMP): pyproject.toml sim/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ./sim -e '.[dev,ray]'
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

venv: $(STAMP)

# The fast path end to end: scripted demos -> SFT -> PPO -> held-out evaluation.
train: $(STAMP)
	$(PY) -m vla_rl_lib train --config params/fast.yaml

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not browser and not backends"

test-slow: $(STAMP)
	$(PY) -m pytest -q -m "slow"

# Optional simulators (ManiSkill3 + Genesis) live in their own venv: they pull
# several GB and pin their own packages. The Vulkan driver goes to .vulkan/.
$(SIMS_STAMP): pyproject.toml sim/pyproject.toml scripts/install_vulkan_lavapipe.sh
	bash scripts/install_vulkan_lavapipe.sh
	test -x $(SIMS_VENV)/bin/python || $(PYTHON) -m venv $(SIMS_VENV)
	$(SIMS_VENV)/bin/python -m pip install -q --upgrade pip
	$(SIMS_VENV)/bin/python -m pip install -q torch==2.13.0
	$(SIMS_VENV)/bin/python -m pip install -q -e './sim[maniskill,genesis]' -e '.[dev,maniskill,genesis]'
	touch $(SIMS_STAMP)

sims: $(SIMS_STAMP)

test-backends: $(SIMS_STAMP)
	$(SIMS_VENV)/bin/python -m pytest -q -rs -m backends tests/test_backends_contract.py

test-notebooks: $(STAMP)
	$(PY) -m pytest -q tests/test_notebook_helpers.py tests/test_notebooks.py

# A real browser: Debian's chromium driven by playwright-core (no browser download).
browser-deps:
	test -x /usr/bin/chromium || (apt-get update -qq && apt-get install -y -qq chromium)
	cd tests/browser && npm ci --no-audit --no-fund

test-browser: $(STAMP) browser-deps
	$(PY) -m pytest -q -m browser tests/browser

lint: $(STAMP)
	$(VENV)/bin/ruff check sim/lift vla_rl_lib tests benchmarks
