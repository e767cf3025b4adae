# Shortcuts for the commands in README.md; `make` lists them. Each runs in .venv when it exists.
.DEFAULT_GOAL := help
PYTHON ?= python3.11

ifneq ($(wildcard .venv/bin/python),)
export PATH := $(CURDIR)/.venv/bin:$(PATH)
endif

.PHONY: help install install-integration run test test-integration test-all mlproject lint format hooks dev-server screenshots ci

## Create .venv and install the project with its development tools
install:
	$(PYTHON) -m venv .venv
	.venv/bin/pip install -e ".[dev]"

## Also install what the integration layer needs (PostgreSQL comes from your OS: apt-get install postgresql)
install-integration: install
	.venv/bin/pip install -e ".[dev,integration]"

## Run the whole pipeline in the current environment
run:
	mlflow run . --env-manager local --experiment-name fraud-detection

## The fast test layer (unit and in-process step tests)
test:
	pytest

## The integration layer: mlflow run, servers, PostgreSQL + S3, uv, git
test-integration:
	pytest -m slow

## Both layers
test-all: test test-integration

## Regenerate MLproject from the config dataclasses (fraud_detection/config/parameters.py)
mlproject:
	python -m fraud_detection.config.mlproject

## Lint and check formatting
lint:
	ruff check .
	ruff format --check .

## Format and apply safe lint fixes
format:
	ruff format .
	ruff check --fix .

## Install the git pre-commit hooks (.pre-commit-config.yaml)
hooks:
	pre-commit install

## Start the development tracking server on http://127.0.0.1:5000 (deploy/dev-server.sh)
dev-server:
	deploy/dev-server.sh

## Retake the README's MLflow UI screenshots in docs/images/ (needs Chromium: apt-get install chromium)
screenshots:
	python docs/screenshots/take.py

## Run CI as it runs on a clean clone (.ci/run)
ci:
	bash .ci/run

## List the targets
help:
	@awk '/^## /{doc = substr($$0, 4); next} /^[a-z-]+:/{if (doc) printf "  %-20s %s\n", substr($$1, 1, length($$1) - 1), doc; doc = ""}' $(MAKEFILE_LIST)
