# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN := torch==2.13.0

.PHONY: setup browser demo test bench clean-venv

# torch goes in first, pinned: an unpinned torch pulled by a dependency would be a CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PIN)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

tools/node/.installed: tools/node/package.json tools/node/package-lock.json
	@if command -v npm >/dev/null 2>&1; then npm ci --silent --no-audit --no-fund --prefix tools/node && touch $@; \
	else echo "npm not found: the glTF validator and gallery browser tests will be skipped"; fi

# Debian's chromium, for the gallery's headless-browser test (playwright-core drives it; it downloads no browser).
browser:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else echo "chromium not found and apt-get needs root: the gallery browser test will be skipped"; fi

# node tools: the glTF validator and, for the gallery, <model-viewer>, the Gaussian splat viewer
# (@mkkellogg/gaussian-splats-3d with three) and playwright-core.
setup: $(VENV)/.installed tools/node/.installed

demo: setup
	$(VENV)/bin/dream3d generate "a red cube"

test: setup tools/node/.installed browser
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/bench_nerf.py && $(PY) benchmarks/bench_prior.py && $(PY) benchmarks/bench_step.py

clean-venv:
	rm -rf $(VENV)
