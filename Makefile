# Two commands on a fresh machine:
#   make serve   set up .venv, build the demo when nothing is configured, serve on 127.0.0.1:50051
#   make test    set up .venv and run the test suite
#   make lint    format, lint, types, import contracts (the pre-commit hooks)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
# CPU machines get the CPU build of torch; GPU machines keep the normal requirement.
CONSTRAINTS := $(if $(shell command -v nvidia-smi 2>/dev/null),,-c constraints/cpu.txt)
ADDR   ?= 127.0.0.1:50051

.PHONY: serve test install protos lint typecheck imports typecheck-tree bench clean deploy-check

$(BIN)/.installed: pyproject.toml constraints/cpu.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(CONSTRAINTS) -e '.[train,eval,test,dev,tracing,deploy,cluster,s3,ray,milvus]'
	touch $@

install: $(BIN)/.installed

serve: $(BIN)/.installed
	$(BIN)/recall-engine serve --addr $(ADDR)

# Real servers and tools the tests start: nats-server (tests/test_cluster.py),
# prometheus's promtool (tests/test_dashboard.py) and Linux perf (bench load
# --native-floor, tests/test_bench_load.py), Debian packages, installed when apt-get is
# there and we are root; elsewhere those tests skip and say why.
$(VENV)/.servers:
	@if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" -eq 0 ]; then \
	  missing=""; \
	  command -v nats-server >/dev/null 2>&1 || missing="nats-server"; \
	  command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	  command -v perf >/dev/null 2>&1 || missing="$$missing linux-perf"; \
	  if [ -n "$$missing" ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends $$missing; \
	  fi; \
	fi
	mkdir -p $(VENV) && touch $@

test: $(BIN)/.installed $(VENV)/checkov/bin/checkov $(VENV)/.servers
	$(BIN)/python protos/generate.py --check
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

protos: $(BIN)/.installed
	$(BIN)/python protos/generate.py

lint: $(BIN)/.installed
	$(BIN)/pre-commit run --all-files --show-diff-on-failure

# mypy and import-linter see the import root through a link tree: the folders map onto
# recall_engine.* by setuptools package-dir, which static tools cannot follow.
typecheck-tree:
	rm -rf build/typecheck && mkdir -p build/typecheck/recall_engine
	for p in engine/*; do ln -s "$(CURDIR)/$$p" build/typecheck/recall_engine/; done
	ln -s "$(CURDIR)/plugins" build/typecheck/recall_engine/plugins
	ln -s "$(CURDIR)/exporters" build/typecheck/recall_engine/exporters
	ln -s "$(CURDIR)/bench" build/typecheck/recall_engine/benchmarks

typecheck: $(BIN)/.installed typecheck-tree
	$(BIN)/mypy -p recall_engine

imports: $(BIN)/.installed typecheck-tree
	PYTHONPATH=build/typecheck $(BIN)/lint-imports

# checkov over the rendered manifests and the Dockerfiles (tests/test_deploy_manifests.py
# skips it without this). It pins packaging<24 and networkx<2.7, so it gets its own venv.
$(VENV)/checkov/bin/checkov:
	$(PYTHON) -m venv $(VENV)/checkov
	$(VENV)/checkov/bin/python -m pip install -q 'checkov==3.3.30'

deploy-check: $(BIN)/.installed $(VENV)/checkov/bin/checkov
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_deploy_manifests.py

clean:
	rm -rf $(VENV) demo build *.egg-info
