# amaranth: UnusedElaboratable=no
"""A vector unit built with a subset of the ops (``VectorUnit(ops=...)``, as the chip builds it
with spec.vector.CHIP_OPS), in amaranth.sim: the ops it is built without answer BAD_OP at once
and take no stream beat, as spec.vector.command_status says, and the next command runs
correctly."""

import ml_dtypes
import numpy as np
import pytest
from amaranth.sim import Simulator

from hdl.vector import VectorUnit
from spec.codes import Dtype
from spec.vector import CHIP_OPS, VectorOp, VectorStatus, command_status

V, MAX_LEN = 2, 16


def _bf16_bits(values):
    return np.asarray(values, dtype=np.float32).astype(ml_dtypes.bfloat16).view(np.uint16).astype(int).tolist()


def test_vector_unit_without_an_op_answers_bad_op_takes_no_beat_and_runs_the_next_command():
    unit = VectorUnit(lanes=V, max_len=MAX_LEN, ops=CHIP_OPS)
    assert unit.ops == CHIP_OPS
    refused = [VectorOp.HADAMARD, VectorOp.TABLE, VectorOp.RMSNORM_FP32]
    for op in refused + [11]:
        assert command_status(op=op, dtype=1, length=4, rows=1, imm0=0x3F800000, imm1=0x3F800000,
                              lanes=V, max_len=MAX_LEN, ops=CHIP_OPS) == VectorStatus.BAD_OP
    a_vals, b_vals = [1.0, 2.0, -0.5], [0.5, 0.25, 0.5]
    a_bits, b_bits = _bf16_bits(a_vals), _bf16_bits(b_vals)
    want = _bf16_bits(np.float32(a_vals) + np.float32(b_vals)) + [0]   # lane past the row's end: 0
    got, statuses, taken = [], [], []

    async def bench(ctx):
        # a and b offer a beat throughout: no refused command may take one
        ctx.set(unit.a.valid, 1)
        ctx.set(unit.b.valid, 1)
        ctx.set(unit.a.payload, a_bits[:2])
        ctx.set(unit.b.payload, b_bits[:2])
        ctx.set(unit.o.ready, 1)
        ctx.set(unit.resp.ready, 1)
        commands = [dict(op=op, dtype=Dtype.BF16, length=4, rows=1, imm0=0x3F800000, imm1=0x3F800000)
                    for op in refused]
        commands.append(dict(op=VectorOp.ADD, dtype=Dtype.BF16, length=3, rows=1))
        for n, cmd in enumerate(commands):
            ctx.set(unit.cmd.payload, {"op": 0, "dtype": 0, "flags": 0, "length": 0, "rows": 0,
                                       "head_dim": 0, "shift": 0, "imm0": 0, "imm1": 0} | cmd)
            ctx.set(unit.cmd.valid, 1)
            while True:     # until the command is taken at a clock edge
                _, _, fired = await ctx.tick().sample(unit.cmd.ready)
                if fired:
                    break
            ctx.set(unit.cmd.valid, 0)
            last = n == len(commands) - 1
            for _ in range(200):
                _, _, a_rdy, o_valid, o_data, r_valid, r_status = await ctx.tick().sample(
                    unit.a.ready, unit.o.valid, unit.o.payload, unit.resp.valid, unit.resp.payload.status)
                if a_rdy:
                    taken.append(n)
                    ctx.set(unit.a.payload, a_bits[2:] + [0])
                    ctx.set(unit.b.payload, b_bits[2:] + [0])
                if o_valid:
                    got.extend(int(x) for x in o_data)
                if r_valid:
                    statuses.append(VectorStatus(r_status))
                    break
            else:
                raise AssertionError(f"command {n} ({cmd['op']!r}) got no response in 200 cycles")
            if last:
                break

    sim = Simulator(unit)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert statuses == [VectorStatus.BAD_OP] * len(refused) + [VectorStatus.OK]
    assert all(n == len(refused) for n in taken), f"a refused command took an a beat: {taken}"
    assert got == want


@pytest.mark.parametrize("ops, exc, text", [
    ([], ValueError, "ops must name at least one VectorOp"),
    ([0, 99], ValueError, "ops: 99 is not a VectorOp"),
    ("ADD", TypeError, "ops must be a collection of VectorOp"),
])
def test_vector_unit_ops_parameter_is_refused_naming_it(ops, exc, text):
    with pytest.raises(exc, match=text):
        VectorUnit(lanes=V, max_len=MAX_LEN, ops=ops)
