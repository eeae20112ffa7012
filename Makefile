# Two commands on a fresh machine:
#   make serve   set up .venv, build the demo when nothing is configured, serve on 127.0.0.1:50051
#   make test    set up .venv and run the test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
# CPU machines get the CPU build of torch; GPU machines keep the normal requirement.
CONSTRAINTS := $(if $(shell command -v nvidia-smi 2>/dev/null),,-c constraints/cpu.txt)
ADDR   ?= 127.0.0.1:50051

.PHONY: serve test install protos lint bench clean

$(BIN)/.installed: pyproject.toml constraints/cpu.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(CONSTRAINTS) -e '.[train,eval,test]'
	touch $@

install: $(BIN)/.installed

serve: $(BIN)/.installed
	$(BIN)/recall-engine serve --addr $(ADDR)

test: $(BIN)/.installed
	$(BIN)/python protos/generate.py --check
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

protos: $(BIN)/.installed
	$(BIN)/python protos/generate.py

lint: $(BIN)/.installed
	$(BIN)/ruff check engine plugins exporters bench tests examples

clean:
	rm -rf $(VENV) demo build *.egg-info
