# amaranth: UnusedElaboratable=no
"""amaranth.sim tests of hdl.counters.CounterBank: against EventCounters fed the same events
(flags and amounts of several widths, clears, a reset in the middle), every counter read in
every cycle, including the cycles its total is being written back; and its parameter checks."""

import numpy as np
import pytest
from amaranth.hdl import Module, ResetInserter
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from hdl.counters import CounterBank, EventCounters, events_layout

FIELDS = {"cycles": 1, "busy": 1, "stall": 1, "amount3": 3, "amount5": 5}


class Pair(wiring.Component):
    """An EventCounters and a CounterBank side by side, one reset (``rst``) for both."""

    def __init__(self, fields, width, group=8):
        self._layout = events_layout(fields)
        self._width = width
        self.bank = CounterBank(self._layout, width=width, group=group)
        self.regs = EventCounters(self._layout, width=width)
        super().__init__({"events": In(self._layout), "clear": In(1), "rst": In(1),
                          "rd_index": In(range(len(fields))), "rd_value": Out(width),
                          "counts": Out(self.regs.counts.shape())})

    def elaborate(self, platform):
        m = Module()
        m.submodules.bank = ResetInserter(self.rst)(self.bank)
        m.submodules.regs = ResetInserter(self.rst)(self.regs)
        for c in (self.bank, self.regs):
            m.d.comb += [c.events.eq(self.events), c.clear.eq(self.clear)]
        m.d.comb += [self.bank.rd_index.eq(self.rd_index), self.rd_value.eq(self.bank.rd_value),
                     self.counts.eq(self.regs.counts)]
        return m


def _compare(fields, width, cycles, seed, *, p_event=0.5, p_clear=0.01, reset_at=(), largest=False,
             group=8):
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    names = list(fields)
    dut = Pair(fields, width, group)
    checked = []

    async def bench(ctx):
        want = None
        for t in range(cycles):
            for name, w in fields.items():
                v = (1 << w) - 1 if largest else int(rng.integers(0, 1 << w)) if rng.random() < p_event else 0
                ctx.set(getattr(dut.events, name), 1 if name == "cycles" else v)
            ctx.set(dut.clear, int(rng.random() < p_clear))
            ctx.set(dut.rst, int(t in reset_at))
            index = int(rng.integers(0, len(names)))
            ctx.set(dut.rd_index, index)
            if want is not None and t - 1 not in reset_at:    # a read across a reset returns nothing defined
                got = ctx.get(dut.rd_value)
                assert got == want[1], f"cycle {t}: counter {want[0]} reads {got}, EventCounters {want[1]}"
                checked.append(want[1])
            want = (names[index], ctx.get(getattr(dut.counts, names[index])))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return checked


def test_counter_bank_reads_what_event_counters_show_with_flags_amounts_and_clears():
    checked = _compare(FIELDS, 48, 3000, seed=11)
    assert max(checked) > 500          # long sums were read, not only values near zero


def test_counter_bank_is_right_when_every_cycle_brings_the_largest_amount_of_every_event():
    checked = _compare(FIELDS, 48, 1500, seed=12, p_clear=0.0, largest=True)
    assert max(checked) > 40_000       # the local counters filled to the brim between visits


def test_counter_bank_wraps_at_its_width_and_reads_zero_after_a_reset_in_the_middle():
    _compare(FIELDS, 8, 2000, seed=13, p_event=0.9, p_clear=0.002, reset_at=(700, 701, 1500))


def test_counter_bank_with_two_counters_sweeps_each_every_other_cycle():
    _compare({"cycles": 1, "amount": 4}, 16, 800, seed=14, p_clear=0.02)


@pytest.mark.parametrize("group", [2, 3, 8])
def test_counter_bank_with_several_groups_and_a_short_last_group_reads_what_event_counters_show(group):
    fields = {**{f"flag{i}": 1 for i in range(13)}, "cycles": 1, "amount3": 3, "amount6": 6, "amount2": 2}
    checked = _compare(fields, 48, 2500, seed=15 + group, p_clear=0.005, group=group)
    assert max(checked) > 500


def test_counter_bank_checks_its_parameters():
    with pytest.raises(TypeError, match="layout must be a data.StructLayout"):
        CounterBank({"a": 1})
    with pytest.raises(ValueError, match="width must be an int in 8..64"):
        CounterBank(events_layout(["a", "b"]), width=7)
    with pytest.raises(ValueError, match="at least 2 counters"):
        CounterBank(events_layout(["a"]))
    with pytest.raises(ValueError, match="group must be an int in 2..64"):
        CounterBank(events_layout(["a", "b"]), group=1)
    assert CounterBank(events_layout({"a": 1, "b": 5})).local_width(5) == 6   # 2·31 = 62 < 64
