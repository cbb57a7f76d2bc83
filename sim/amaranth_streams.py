"""Stream source and sink for amaranth.sim testbenches: the amaranth.sim side of the testbench kit.

The same conventions as the cocotb kit (:mod:`sim.tb.common`): payloads are ints (packed with
:mod:`sim.packing`), valid gaps and backpressure come from pause generators
(:func:`random_pause` or any iterator of bools, one value per cycle), and a sink
that waits too long fails instead of hanging. Use them as testbench processes::

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(stream_source(dut.i, words, pause=random_pause(0.3, 1)), background=True)
    got = []
    sim.add_testbench(stream_sink(dut.o, len(words), got, pause=random_pause(0.4, 2)))
    sim.run()
"""

from amaranth.hdl import Value

from .streams import random_pause  # noqa: F401  (the kit's pause generator, for tests)

__all__ = ["stream_source", "stream_sink", "random_pause"]


def stream_source(stream, payloads, *, pause=None, accepted=None):
    """A testbench process that sends ``payloads`` (ints) on ``stream`` (an
    ``amaranth.lib.stream`` interface the design receives), in order. In a cycle for which
    ``pause`` yields ``True`` no new beat is presented; a presented beat stays, with its
    payload, until ``ready``. ``accepted`` (a list) receives each beat's cycle."""
    payload = Value.cast(stream.payload)
    pause = None if pause is None else iter(pause)

    async def process(ctx):
        cycle = 0
        for word in payloads:
            while pause is not None and next(pause):
                ctx.set(stream.valid, 0)
                await ctx.tick()
                cycle += 1
            ctx.set(payload, int(word))
            ctx.set(stream.valid, 1)
            while True:
                _, _, ready = await ctx.tick().sample(stream.ready)
                cycle += 1
                if ready:
                    break
            if accepted is not None:
                accepted.append(cycle - 1)
        ctx.set(stream.valid, 0)
    return process


def stream_sink(stream, count, out, *, pause=None, timeout_cycles=10_000, accepted=None, extra_cycles=0):
    """A testbench process that receives ``count`` payloads (ints) of ``stream`` (an
    ``amaranth.lib.stream`` interface the design sends) into the list ``out``; ``ready`` is low
    in a cycle for which ``pause`` yields ``True``. Fails when no beat comes for
    ``timeout_cycles`` cycles. Then stays ready for ``extra_cycles`` more cycles and fails if a
    beat comes in them. ``accepted`` (a list) receives each beat's cycle."""
    payload = Value.cast(stream.payload)
    pause = None if pause is None else iter(pause)

    async def process(ctx):
        idle = cycle = 0
        while len(out) < count:
            ready = pause is None or not next(pause)
            ctx.set(stream.ready, ready)
            _, _, valid, word = await ctx.tick().sample(stream.valid, payload)
            if ready and valid:
                out.append(int(word))
                if accepted is not None:
                    accepted.append(cycle)
                idle = 0
            else:
                idle += 1
                if idle > timeout_cycles:
                    raise TimeoutError(f"no beat for {timeout_cycles} cycles ({len(out)} of {count} received)")
            cycle += 1
        ctx.set(stream.ready, 1)
        for _ in range(extra_cycles):
            _, _, valid = await ctx.tick().sample(stream.valid)
            assert not valid, f"a beat beyond the {count} expected"
        ctx.set(stream.ready, 0)
    return process
