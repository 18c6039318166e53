# Two commands do everything:  `make demo` (export + run the built-in example on the CPU), `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
ENGINE := build/recall-engine

.PHONY: setup demo test lint

setup: $(VENV)/.installed

# torch is pinned to the CPU build that ships with our machines; an unpinned torch pulls a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

demo: setup
	rm -rf $(ENGINE)
	$(VENV)/bin/jrtc info jrtc/example/recall.pt
	$(VENV)/bin/jrtc export jrtc/example/recall.pt --target cpu --tokenizer bytes -o $(ENGINE)
	$(VENV)/bin/jrtc run $(ENGINE) --prompt jrtc/example/context.txt --question "k:" --max-new-tokens 2 --show-prompt

lint: setup
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest -q
