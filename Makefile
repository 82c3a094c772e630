# diffaudit: `make repro` runs the pipeline, `make test` the test suite. Both install first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# The stages' interpreter (dvc.yaml runs them through pipelines/python.sh).
export DIFFAUDIT_PYTHON := $(abspath $(VENV))/bin/python
OVERRIDES ?=
PYTEST_ARGS ?=
PYTEST_WORKERS ?= 2
UI_HOST ?= 127.0.0.1
UI_PORT ?= 5000
SERVER_HOST ?= 127.0.0.1
SERVER_PORT ?= 5002
SERVER_ALLOWED_HOSTS ?=
SERVE_HOST ?= 127.0.0.1
SERVE_PORT ?= 5001
SERVE_ALIAS ?= champion
SERVE_ALLOWED_HOSTS ?= 127.0.0.1,localhost,::1
RETRAIN_ARGS ?=
BENCH_ARGS ?=
EXP_ARGS ?=

.PHONY: install params repro locked-repro audit test lint bench ui server serve retrain exp clean

# One pinned install: torch==2.13.0 resolves to the local CPU wheel (no multi-GB CUDA download).
$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.lock
	$(PY) -m pip install --disable-pip-version-check -q --no-deps -e .
	touch $(STAMP)

# `dvc plots show`'s page (.dvc/config plots.html_template) with vega inlined from the npm registry, so
# every plot renders offline; without npm, DVC's CDN page with a warning on it (pipelines/plots_template.py).
PLOTS_TEMPLATE := .dvc/offline_plots.html
$(PLOTS_TEMPLATE): pipelines/plots_template.py | $(STAMP)
	$(PY) -m pipelines.plots_template --allow-cdn $@

install: $(STAMP) $(PLOTS_TEMPLATE)

# Compose conf/ (+ OVERRIDES) into params.yaml, validated against the schema.
params: install
	$(PY) -m pipelines.compose $(OVERRIDES)

# One pipeline run at a time in a folder: a second `make repro`/`audit`/`retrain` would rewrite params.yaml
# under the first (DVC's own lock comes too late). The lock is taken before anything is composed; the
# second run is refused with exit 1 and changes nothing.
RUN_LOCK := .diffaudit-run.lock
LOCKED = flock --nonblock --conflict-exit-code 75 $(RUN_LOCK)
REFUSED = if [ $$rc -eq 75 ]; then echo "make $@: another pipeline run holds $(RUN_LOCK) in this folder; nothing was changed (wait for it, or run in another clone)" >&2; exit 1; fi; exit $$rc

# The whole pipeline; DVC reruns only the stages whose deps or params changed.
repro: install
	@$(LOCKED) $(MAKE) --no-print-directory locked-repro; rc=$$?; $(REFUSED)

locked-repro: params
	@test -d .dvc || dvc init -q
	DIFFAUDIT_PIPELINE_ID=$${DIFFAUDIT_PIPELINE_ID:-$$(date -u +%Y%m%dT%H%M%SZ)-$$$$} bash -c '\
	  dvc repro $(DVC_ARGS); rc=$$?; $(PY) -m pipelines.pipeline_run finish $$rc; exit $$rc'

# Audit a model trained elsewhere (a diffusers folder: DDPMPipeline, DDIMPipeline, LDMPipeline, or unet/ +
# scheduler/): every stage, the train stage importing the folder instead of training. DVC hashes it.
audit: install
	@test -n "$(MODEL)" || { echo "make audit: set MODEL=<a diffusers model folder>" >&2; exit 1; }
	@$(LOCKED) $(MAKE) --no-print-directory locked-repro \
	  OVERRIDES='model.source=pretrained model.path=$(abspath $(MODEL)) $(OVERRIDES)'; rc=$$?; $(REFUSED)

# Every test, slow ones included. pytest's exit code 5 (no test collected) is a failure here.
test: install
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

# Style that enforces itself: the formatter's check (line length from pyproject.toml) and the linter.
LINT_DIRS := src pipelines tests benchmarks
lint: install
	$(VENV)/bin/ruff format --check $(LINT_DIRS)
	$(VENV)/bin/ruff check $(LINT_DIRS)

# Benchmarks (docs/performance.md): ratios measured in one run, written to benchmarks/results.json.
# OpenMP's wait policy is left as the pipeline runs it (active), so the absolute figures describe the
# pipeline's own loop; `OMP_WAIT_POLICY=PASSIVE make bench` on a shared machine (docs/performance.md).
bench: install
	$(PY) -m benchmarks.run $(BENCH_ARGS)

# The MLflow dashboard over the project's store, on loopback only unless UI_HOST says otherwise.
# pipelines/ui.py runs `mlflow server` and, on a stop signal, stops all it started (job runners too).
ui: install
	exec $(PY) -m pipelines.ui --backend-store-uri $${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db} \
	  --host $(UI_HOST) --port $(UI_PORT)

# The reviewers' shared dashboard (docs/team_server.md): MLflow over PostgreSQL, logins required (basic-auth),
# artifacts proxied, Host headers validated; loopback unless SERVER_HOST (then SERVER_ALLOWED_HOSTS) says otherwise.
server: install
	exec $(PY) -m pipelines.team_server --host $(SERVER_HOST) --port $(SERVER_PORT) \
	  --allowed-hosts '$(SERVER_ALLOWED_HOSTS)'

# Serve a registry alias (default: the champion) over MLflow's scoring protocol on loopback, answering only
# the Host names in SERVE_ALLOWED_HOSTS (add yours when SERVE_HOST is not loopback; `*` for any).
serve: install
	exec $(PY) -m pipelines.serve --alias $(SERVE_ALIAS) --host $(SERVE_HOST) --port $(SERVE_PORT) \
	  --allowed-hosts '$(SERVE_ALLOWED_HOSTS)'

# The release loop: compose, dvc repro, promote or refuse against the champion, say why (exit 1 = refused).
retrain: install
	@test -d .dvc || dvc init -q
	@$(LOCKED) $(PY) -m pipelines.retrain $(RETRAIN_ARGS) $(OVERRIDES); rc=$$?; $(REFUSED)

# The experiments table at 200 columns: every experiment's headline (reports/headline.json). Plain
# `dvc exp show` has a column per param (about 130) and per dependency (about 65) besides.
exp: install
	@keys=$$(PYTHONPATH=src $(PY) -c \
	  'from diffaudit.results.headline import HeadlineResult as H; print("|".join(H.model_fields))') && \
	  dvc exp show --no-pager --drop '.*' --keep "^(Experiment|Created|$$keys)$$" $(EXP_ARGS)

clean:
	rm -rf data/prepared models samples metrics plots reports dvc_plots
