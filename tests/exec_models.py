"""Models of the MATMUL unit's neighbours for amaranth.sim tests (tests/test_exec_matmul*_sim.py)."""

from collections import deque

__all__ = ["ReadClient", "process"]


class ReadClient:
    """A model read client: requests always accepted, their words answered in order with random
    valid gaps; a request touching an ``errors`` window has ``error`` on its final word."""

    def __init__(self, client, mem, bus_bytes, rng, gap=0.0, errors=()):
        self.c, self.mem, self.D, self.rng, self.gap, self.errors = client, mem, bus_bytes, rng, gap, errors
        self.requests = []

    async def run(self, ctx):
        pend = deque()
        c = self.c
        ctx.set(c.req.ready, 1)
        while True:
            show = bool(pend) and self.rng.random() >= self.gap
            if show:
                addr, beats, i, err = pend[0]
                a = addr + i * self.D
                ctx.set(c.data.payload.data, int.from_bytes(bytes(self.mem[a:a + self.D]), "little"))
                ctx.set(c.data.payload.last, i == beats - 1)
                ctx.set(c.data.payload.error, err and i == beats - 1)
            ctx.set(c.data.valid, show)
            _, _, took, req, addr, beats = await ctx.tick().sample(c.data.valid & c.data.ready, c.req.valid,
                                                                   c.req.payload.addr, c.req.payload.beats)
            if took:
                pend[0][2] += 1
                if pend[0][2] == pend[0][1]:
                    pend.popleft()
            if req:
                err = any(addr < hi and addr + beats * self.D > lo for lo, hi in self.errors)
                pend.append([addr, beats, 0, err])
                self.requests.append((addr, beats))


def process(fn, *args):
    """An async testbench function calling ``fn(ctx, *args)``."""
    async def run(ctx):
        await fn(ctx, *args)
    return run
