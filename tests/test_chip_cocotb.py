"""The chip top in Verilator (hdl/chip.py through sim.chip_api.ChipSim): programs fetched and
run from external memory, LOAD/STORE moving rows between external memory and the scratchpad with
every element size, errors stopping a program with their code and index, the interrupt, the
counters, a reset in the middle of a program and a clean rerun. Random AXI latency and
backpressure on every channel give identical results."""

import numpy as np
import pytest

from sim.chip_api import ChipSim, Program
from spec import isa
from spec.codes import ChipError

U = isa.Unit
SIM = ChipSim("tiny")     # 2 lanes, 32-bit AXI
BUS = 4
END = isa.encode(isa.Opcode.END)


def load(wait=None, **f):
    return isa.encode(isa.Opcode.LOAD, wait=wait, **f)


def store(wait=None, **f):
    return isa.encode(isa.Opcode.STORE, wait=wait, **f)


def _rows(rng, rows, elems, dtype):
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max + 1, (rows, elems), dtype=np.int64).astype(dtype)


def _pad(b, n):
    return b + bytes(n - len(b))


@pytest.mark.parametrize("stall", [0.0, 0.3], ids=["no_stalls", "random_stalls"])
def test_load_store_round_trips_every_element_size_through_the_scratchpad(stall):
    rng = np.random.default_rng(5)
    print("seed 5")
    cases = [  # (dtype in, elem_bytes in, signed, dtype out, elem_bytes out)
        (np.int8, 0, 1, np.int32, 2),     # int8 sign-extended, stored as int32
        (np.uint8, 0, 0, np.int16, 1),    # uint8 zero-extended, stored as 16 bits
        (np.int16, 1, 1, np.int32, 2),
        (np.int32, 2, 0, np.int32, 2),
        (np.int32, 2, 0, np.int8, 0),     # 32-bit lanes truncated to their low byte
    ]
    memory, prog, expect, read_back = {}, [], {}, []
    rows, elems = 3, 5
    for i, (dt_in, eb_in, signed, dt_out, eb_out) in enumerate(cases):
        x = _rows(rng, rows, elems, dt_in)
        in_stride = -(-elems * x.itemsize // BUS) * BUS
        out_stride = -(-elems * np.dtype(dt_out).itemsize // BUS) * BUS + BUS   # a gap between rows
        src, dst, spad = 0x1000 + 0x400 * i, 0x4000 + 0x400 * i, 16 * i
        memory[src] = b"".join(_pad(r.tobytes(), in_stride) for r in x)
        memory[dst] = bytes([0xEE]) * (rows * out_stride)          # the gaps must stay untouched
        prog.append(load(ext_addr=src, ext_stride=in_stride, spad_addr=spad, spad_stride=3, rows=rows,
                         elems=elems, elem_bytes=eb_in, signed=signed))
        prog.append(store(wait={U.LOAD: i + 1}, ext_addr=dst, ext_stride=out_stride, spad_addr=spad, spad_stride=3,
                          rows=rows, elems=elems, elem_bytes=eb_out))
        lanes = x.astype(np.int64)
        want = lanes.astype(dt_out)                       # extend to 32 bits, truncate to the out size
        expect[f"r{i}"] = b"".join(_pad(r.tobytes(), out_stride)[:len(r.tobytes())]
                                   + bytes([0xEE]) * (out_stride - len(r.tobytes())) for r in want)
        read_back.append((f"r{i}", dst, rows * out_stride))
    res = SIM.run(memory, Program(prog + [END], addr=0), read_back=read_back, stall=stall, backpressure=stall,
                  seed=11)
    assert SIM.error_of(res) == (ChipError.OK, 0, 0)
    assert int(res.outputs["run0_status"]) == 2     # DONE
    for name, want in expect.items():
        assert res.outputs[name].tobytes() == want, name
    c = res.counters
    assert c["proc_retired"] == 2 * len(cases)
    assert c["dma_wr_write_bytes"] > 0 and c["spad_writes"] == c["load_spad_writes"] == len(cases) * rows * 3


def test_errors_stop_the_program_with_code_and_index_and_a_clean_program_runs_after_clear():
    good = [load(ext_addr=0x1000, ext_stride=BUS, spad_addr=0, spad_stride=1, rows=1, elems=2, elem_bytes=0),
            store(wait={U.LOAD: 1}, ext_addr=0x2000, ext_stride=BUS, spad_addr=0, spad_stride=1, rows=1, elems=2,
                  elem_bytes=0), END]
    progs = [
        Program([good[0], 0, END], addr=0x100),                                   # bad opcode at 1
        Program([good[0], isa.encode(isa.Opcode.MATMUL, m=0, k=1, n=1), END], addr=0x200),  # a field check
        Program([load(ext_addr=0x1000, ext_stride=BUS, spad_addr=0, spad_stride=1, rows=1, elems=2,
                      elem_bytes=0), load(ext_addr=0x1_0000_000 - 4, ext_stride=BUS, spad_addr=0, spad_stride=1,
                                          rows=1, elems=8, elem_bytes=0), END], addr=0x300),  # past EXT_SIZE
        Program([good[0], load(ext_addr=0x8000, ext_stride=BUS, spad_addr=0, spad_stride=1, rows=1, elems=2,
                               elem_bytes=0), END], addr=0x400),                  # SLVERR window
        Program(good[:2], addr=0x500),                                            # no END
        Program(good, addr=0x600),                                                # clean
    ]
    memory = {0x1000: bytes([1, 2, 3, 4]), 0x2000: bytes(4), 0x8000: bytes(4)}
    res = SIM.run(memory, progs, read_back=[("out", 0x2000, 4)], ext_size=0x1_0000_000,
                  errors=[(0x8000, 0x8004, 2)], seed=3)
    want = [(ChipError.BAD_OPCODE, 1), (ChipError.BAD_FIELD, 1), (ChipError.EXT_RANGE, 1),
            (ChipError.AXI_READ, 1), (ChipError.NO_END, 2), (ChipError.OK, 0)]
    for r, (code, index) in enumerate(want):
        got = SIM.error_of(res, r)
        assert (got[0], got[2]) == (code, index), f"program {r}"
        assert int(res.outputs[f"run{r}_status"]) == (2 if code == ChipError.OK else 3)
        assert int(res.outputs[f"run{r}_irq_status"]) == (1 if code == ChipError.OK else 2)
    assert res.outputs["out"].tobytes() == bytes([1, 2, 0, 0])    # two elements stored, the rest untouched


def test_reset_in_the_middle_of_a_program_then_a_rerun_gives_the_same_result():
    rng = np.random.default_rng(2)
    x = rng.integers(-128, 128, (8, 6), dtype=np.int8)
    prog = Program([load(ext_addr=0x1000, ext_stride=8, spad_addr=0, spad_stride=3, rows=8, elems=6, elem_bytes=0,
                         signed=1),
                    store(wait={U.LOAD: 1}, ext_addr=0x2000, ext_stride=24, spad_addr=0, spad_stride=3, rows=8,
                          elems=6, elem_bytes=2), END])
    memory = {0x1000: b"".join(_pad(r.tobytes(), 8) for r in x), 0x2000: bytes(8 * 24)}
    res = SIM.run(memory, [prog, prog], read_back=[("out", 0x2000, 8 * 24)], reset_at=40, seed=4)
    assert SIM.error_of(res) == (ChipError.OK, 0, 0)
    assert np.array_equal(np.frombuffer(res.output.tobytes(), np.int32).reshape(8, 6), x.astype(np.int32))
