# Make targets for apply_migrations.py.  Variables pass through:
#   make migrate ENV=production            (reads D1_DATABASE_PATH)
#   make status DB=/tmp/other.db
#   make new NAME=add_user_indexes
#   make rollback VERSION=0002
#   make migrate ARGS=--foreign-keys       (any further options of the command)
PYTHON ?= python3
ENV ?= dev
# POSIX shells use an environment variable ENV for their start-up file: take
# ENV from the environment only when it names one of this tool's environments.
ifeq ($(origin ENV),environment)
ifeq ($(filter dev production,$(ENV)),)
override ENV := dev
endif
endif
DB ?=
MIGRATIONS_DIR ?= migrations
NAME ?=
VERSION ?=
ARGS ?=
BENCH_ARGS ?=

# As a module, from this folder: Python caches the tool's bytecode instead of
# compiling the whole script on every run (README, Performance).
TOOL = $(PYTHON) -m apply_migrations
TARGET_ARGS = --env $(ENV) $(if $(DB),--db-path "$(DB)") --migrations-dir "$(MIGRATIONS_DIR)" $(ARGS)

.PHONY: help migrate status new rollback test bench

help: ## list the targets
	@echo "Targets (variables: ENV=$(ENV) DB=$(DB) MIGRATIONS_DIR=$(MIGRATIONS_DIR) ARGS=$(ARGS) PYTHON=$(PYTHON)):"
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z]+):.*## (.*)/  make \1\t\2/'

migrate: ## apply the pending migrations
	$(TOOL) apply $(TARGET_ARGS)

status: ## show applied, pending, modified and missing migrations
	$(TOOL) status $(TARGET_ARGS)

new: ## create the next migration file: make new NAME=add_user_indexes
	@if [ -z "$(NAME)" ]; then echo "usage: make new NAME=add_user_indexes" >&2; exit 2; fi
	$(TOOL) new "$(NAME)" --migrations-dir "$(MIGRATIONS_DIR)"

rollback: ## roll back VERSION (default: the latest applied): make rollback VERSION=0002
	$(TOOL) rollback $(TARGET_ARGS) $(if $(VERSION),--version "$(VERSION)")

test: ## install the test tools and run the tests
	$(PYTHON) -m pip install -r requirements-dev.txt
	$(PYTHON) -m pytest

bench: ## run the benchmark against bare SQLite
	$(PYTHON) bench/bench.py $(BENCH_ARGS)
