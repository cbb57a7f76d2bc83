"""amaranth.sim stream drivers and monitors of the scratchpad and mover tests: valid gaps on
the streams a testbench drives, ready backpressure on the ones it takes, and the clock edge of
every handshake, so that tests compare timing across ports.

Every testbench process that uses them starts at time 0 and advances only through its own
:class:`Edges`, so edge numbers agree between processes: a handshake "at edge e" happened in
the cycle that ends with the e-th rising edge (edges counted from 1).
"""

import os

__all__ = ["Edges", "drive", "take", "watch", "seed_of"]


def seed_of(default):
    """The seed of a random test: ``default``, or the ``TFA_SEED`` environment variable when
    it is set (to explore or to reproduce); printed, so a failure shows it."""
    seed = int(os.environ.get("TFA_SEED", default))
    print(f"seed {seed}")
    return seed


class Edges:
    """A testbench's clock edges: ``await edges.tick(*signals)`` waits for the next rising edge
    and returns the signals' values sampled at it."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.count = 0

    async def tick(self, *signals):
        values = await self.ctx.tick().sample(*signals)
        self.count += 1
        return values[2:]


async def drive(edges, stream, beats, *, rng, stall=0.0, stamps=None, timeout=2000):
    """Send ``beats`` (ints of the payload's bits) on ``stream``; before each beat, idle cycles
    with probability ``stall`` each. Valid and payload are held until ready (the stream rule).
    Appends the edge of every handshake to ``stamps``."""
    ctx = edges.ctx
    payload = stream.payload.as_value() if hasattr(stream.payload, "as_value") else stream.payload
    for beat in beats:
        while stall and rng.random() < stall:
            ctx.set(stream.valid, 0)
            await edges.tick()
        ctx.set(payload, int(beat))
        ctx.set(stream.valid, 1)
        for _ in range(timeout):
            (ready,) = await edges.tick(stream.ready)
            if ready:
                break
        else:
            raise TimeoutError(f"beat not accepted for {timeout} cycles")
        if stamps is not None:
            stamps.append(edges.count)
    ctx.set(stream.valid, 0)


async def take(edges, stream, count, *, rng, backpressure=0.0, stamps=None, timeout=2000):
    """Receive ``count`` beats of ``stream`` (as ints); ready is low in a cycle with
    probability ``backpressure``. Appends the edge of every handshake to ``stamps``."""
    ctx = edges.ctx
    payload = stream.payload.as_value() if hasattr(stream.payload, "as_value") else stream.payload
    out, idle = [], 0
    while len(out) < count:
        ready = not (backpressure and rng.random() < backpressure)
        ctx.set(stream.ready, int(ready))
        valid, value = await edges.tick(stream.valid, payload)
        if ready and valid:
            out.append(value)
            idle = 0
            if stamps is not None:
                stamps.append(edges.count)
        else:
            idle += 1
            if idle > timeout:
                raise TimeoutError(f"no beat for {timeout} cycles ({len(out)} of {count} received)")
    ctx.set(stream.ready, 0)
    return out


async def watch(edges, cycles, *signals):
    """The values of ``signals`` at each of the next ``cycles`` edges, as a list of tuples."""
    return [await edges.tick(*signals) for _ in range(cycles)]
