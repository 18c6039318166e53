# Two commands do everything:  `make demo` (export + run the built-in examples on the CPU), `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
ENGINE := build/recall-engine
BASED_ENGINE := build/recall-based-engine
EXAMPLE := jrtc/example

.PHONY: setup demo test lint

setup: $(VENV)/.installed

# torch is pinned to the CPU build that ships with our machines; an unpinned torch pulls a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

# Both examples answer every key of the demo context, read once and read twice; each answer is marked.
demo: setup
	rm -rf $(ENGINE) $(BASED_ENGINE)
	$(VENV)/bin/jrtc info $(EXAMPLE)/recall.pt
	$(VENV)/bin/jrtc export $(EXAMPLE)/recall.pt --target cpu --tokenizer bytes -o $(ENGINE) --quiet
	$(VENV)/bin/jrtc export $(EXAMPLE)/recall-based.pt --target cpu --tokenizer bytes -o $(BASED_ENGINE) --quiet
	$(VENV)/bin/jrtc run $(ENGINE) --prompt $(EXAMPLE)/context.txt --question "D:" --repeat 1 --max-new-tokens 2 --show-prompt
	@echo "--- JRT-RNN ($(EXAMPLE)/recall.pt): every key of $(EXAMPLE)/context.txt ---"
	$(VENV)/bin/jrtc eval $(ENGINE) --task $(EXAMPLE)/demo.jsonl --max-new-tokens 1 --show-answers --quiet
	@echo "--- Based ($(EXAMPLE)/recall-based.pt): the same questions ---"
	$(VENV)/bin/jrtc eval $(BASED_ENGINE) --task $(EXAMPLE)/demo.jsonl --max-new-tokens 1 --show-answers --quiet

lint: setup
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest -q
