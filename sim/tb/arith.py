"""Testbenches of the arithmetic units (hdl/arith.py), and what they share with pytest.

Parts:

* **Vectors**: seeded numpy generators of operands biased towards the hard cases (every
  special-value class, exponents close to each other, cancellation, rounding ties, overflow
  and underflow boundaries), and :func:`expected` (the golden result of each unit).
* **Bulk harness**: :func:`bulk_verilog` writes a test-only top that holds up to
  :data:`BULK_DEPTH` input vectors in a memory, pushes them through the chosen core (the
  unchanged Verilog that Amaranth generates from hdl/arith.py) one per enabled cycle, with
  seeded random ``en`` gaps, and stores the results in a second memory; the testbench loads and
  dumps the memories as files, so Python is out of the per-vector loop.
* **cocotb test** ``bulk_vectors``: pushes the packed words it is given through the bulk
  harness (optionally with random ``en`` gaps) and saves the outputs.
* **Stream units**: :func:`streams_top` holds the four real stream units in one build; the tests
  drive them with the testbench kit through :func:`sim.streams.run_streams`.

The bulk harness is the one Verilog harness kept (docs/conventions.md, "Simulation"), for its
measured speed: on the development machine (``make bench BENCH=arith``, 1,000,000 vectors per
unit) the cores run 480,000–580,000 vectors per second in it (150,000–190,000 end to end,
with the file transfers), where the testbench kit drives a stream unit at 23,000–40,000 beats
per second — 15 to 25 times slower. The regression's 5.3 million vectors (4 × 1,000,000 random
plus the special-value sets) take about 30 s in the harness and would take about 3 minutes of a
core through the kit.
"""

import numpy as np

import golden

__all__ = ["UNITS", "pack_inputs", "expected", "random_vectors", "special_vectors", "bulk_verilog",
           "bulk_build_params", "streams_top", "streams_build_params", "core_latency",
           "int8_mac_reference", "BULK_DEPTH", "BULK_UNITS"]

#: unit name → (core class name, stream class name, input fields with widths, output width,
#: bits of the packed input word (numpy dtype of pack_inputs), bits of the output word)
UNITS = {
    "int8_mac": ("Int8MacCore", "Int8Mac", {"a": 8, "w": 8, "acc": 32, "a_unsigned": 1}, 32, 64, 32),
    "bf16_mul": ("Bf16MulCore", "Bf16Multiplier", {"a": 16, "b": 16}, 32, 32, 32),
    "fp32_add": ("Fp32AddCore", "Fp32Adder", {"a": 32, "b": 32}, 32, 64, 32),
    "fp32_to_bf16": ("Fp32ToBf16Core", "Fp32ToBf16", {"a": 32}, 16, 32, 16),
}

_DTYPES = {8: np.uint8, 16: np.uint16, 32: np.uint32, 64: np.uint64}


def _check_unit(unit):
    if unit not in UNITS:
        raise ValueError(f"unknown arithmetic unit {unit!r}: choose one of {', '.join(UNITS)}")
    return UNITS[unit]


# ------------------------------------------------------------------------------------ golden


def int8_mac_reference(a, w, acc, a_unsigned):
    """``acc + a·w`` with int64 math, wrapped to 32 bits; returns uint32 bit patterns.

    ``a`` and ``w`` are 8-bit patterns (``a`` read as unsigned where ``a_unsigned`` is 1),
    ``acc`` a 32-bit pattern."""
    a = np.asarray(a).astype(np.int64) & 0xFF
    a = np.where((np.asarray(a_unsigned) == 0) & (a >= 128), a - 256, a)
    w = np.asarray(w).astype(np.int64) & 0xFF
    w = np.where(w >= 128, w - 256, w)
    acc = np.asarray(acc).astype(np.int64) & 0xFFFFFFFF
    return ((acc + a * w) & 0xFFFFFFFF).astype(np.uint32)


def expected(unit, v):
    """The golden output bit patterns of ``unit`` for the field arrays ``v``."""
    _check_unit(unit)
    if unit == "int8_mac":
        return int8_mac_reference(v["a"], v["w"], v["acc"], v["a_unsigned"])
    if unit == "bf16_mul":
        return golden.bf16_mul(v["a"], v["b"])
    if unit == "fp32_add":
        return golden.fp32_add(v["a"], v["b"])
    return golden.fp32_to_bf16(v["a"])


def pack_inputs(unit, v):
    """Field arrays → one unsigned integer per vector, fields packed low to high in the order of
    the stream payload layout (also the input memory words of the bulk harness)."""
    _, _, fields, _, in_bits, _ = _check_unit(unit)
    word = np.zeros(len(next(iter(v.values()))), dtype=np.uint64)
    offset = 0
    for name, width in fields.items():
        word |= (np.asarray(v[name]).astype(np.uint64) & np.uint64((1 << width) - 1)) << np.uint64(offset)
        offset += width
    return word.astype(_DTYPES[in_bits])


# ----------------------------------------------------------------------------------- vectors

_FP32_SPECIALS = np.array([
    0x00000000, 0x80000000,                     # ±0
    0x7F800000, 0xFF800000,                     # ±Inf
    0x7FC00000, 0xFFC00000, 0x7F800001, 0xFFBFFFFF, 0x7FFFFFFF,  # NaNs, quiet and signalling
    0x00000001, 0x807FFFFF, 0x00400000, 0x80000001,  # subnormals
    0x00800000, 0x80800000, 0x00800001, 0x00FFFFFF,  # smallest normals
    0x7F7FFFFF, 0xFF7FFFFF, 0x7F7FFFFE, 0x7F000000, 0xFF000000,  # largest finite
    0x3F800000, 0xBF800000, 0x3F800001, 0x3FFFFFFF, 0x4B800000, 0x33800000, 0x34000000,
], dtype=np.uint32)

_BF16_SPECIALS = np.array([
    0x0000, 0x8000, 0x7F80, 0xFF80, 0x7FC0, 0xFFC0, 0x7F81, 0xFFFF, 0x0001, 0x807F, 0x0040,
    0x0080, 0x8080, 0x00FF, 0x7F7F, 0xFF7F, 0x3F80, 0xBF80, 0x3FFF, 0x4000, 0x1F80, 0x5F80,
    0x2000, 0x5F00, 0x3F81,
], dtype=np.uint16)


def _fp32(sign, exp, man):
    return ((np.asarray(sign, np.uint32) & 1) << 31) | ((np.asarray(exp, np.uint32) & 0xFF) << 23) \
        | (np.asarray(man, np.uint32) & 0x7FFFFF)


def _random_fp32_add(r, n):
    u32 = lambda k: r.integers(0, 1 << 32, k, dtype=np.uint64).astype(np.uint32)
    a = u32(n)
    # exponents: mostly normal, some at the ends of the range
    kind = r.integers(0, 8, n)
    exp = r.integers(1, 255, n)
    exp = np.where(kind == 0, r.integers(1, 8, n), exp)          # underflow boundary
    exp = np.where(kind == 1, r.integers(247, 255, n), exp)      # overflow boundary
    man = r.integers(0, 1 << 23, n)
    # fewer significant bits sometimes: exact results and ties
    man = np.where(r.random(n) < 0.25, man & ~((1 << r.integers(0, 23, n)) - 1), man)
    a = np.where(kind < 7, _fp32(r.integers(0, 2, n), exp, man), a).astype(np.uint32)

    # b relative to a
    rel = r.integers(0, 10, n)
    ea = (a >> 23) & 0xFF
    near = np.clip(ea.astype(np.int64) + r.integers(-3, 4, n), 0, 255)
    far = np.clip(ea.astype(np.int64) - r.integers(0, 40, n), 0, 255)
    bman = r.integers(0, 1 << 23, n)
    bman = np.where(r.random(n) < 0.25, bman & ~((1 << r.integers(0, 23, n)) - 1), bman)
    bsign = r.integers(0, 2, n)
    b = u32(n)                                                   # rel 0: uniform bits
    b = np.where(rel == 1, _fp32(bsign, near, bman), b)
    b = np.where(rel == 2, _fp32(bsign, near, bman), b)
    b = np.where(rel == 3, _fp32(bsign, far, bman), b)
    b = np.where(rel == 4, _fp32(bsign, far, bman), b)
    b = np.where(rel == 5, a ^ np.uint32(0x80000000), b)         # x + (-x)
    # catastrophic cancellation: -a with a few low bits changed
    flips = r.integers(0, 1 << r.integers(1, 24, n), n).astype(np.uint32)
    b = np.where(rel == 6, (a ^ np.uint32(0x80000000)) ^ flips, b)
    b = np.where(rel == 7, a ^ r.integers(0, 1 << 8, n).astype(np.uint32), b)   # same sign, near
    b = np.where(rel == 8, _FP32_SPECIALS[r.integers(0, len(_FP32_SPECIALS), n)], b)
    b = np.where(rel == 9, _fp32(bsign, np.clip(ea.astype(np.int64) - r.integers(22, 27, n), 0, 255),
                                 bman & np.where(r.random(n) < 0.5, 0x400000, 0x7FFFFF)), b)
    a = np.where(r.random(n) < 0.03, _FP32_SPECIALS[r.integers(0, len(_FP32_SPECIALS), n)], a)
    swap = r.random(n) < 0.5
    return {"a": np.where(swap, b, a).astype(np.uint32), "b": np.where(swap, a, b).astype(np.uint32)}


def _random_bf16_mul(r, n):
    kind = r.integers(0, 6, n)
    ea = r.integers(1, 255, n)
    eb = r.integers(1, 255, n)
    # exponent sums near the underflow (ea + eb ≈ 127) and overflow (≈ 381) boundaries
    eb = np.where(kind == 0, np.clip(127 - ea + r.integers(-2, 3, n), 0, 255), eb)
    eb = np.where(kind == 1, np.clip(381 - ea + r.integers(-2, 3, n), 0, 255), eb)
    eb = np.where(kind == 2, np.clip(254 - ea + r.integers(-130, 3, n), 0, 255), eb)
    a = (r.integers(0, 2, n) << 15) | (ea << 7) | r.integers(0, 128, n)
    b = (r.integers(0, 2, n) << 15) | (eb << 7) | r.integers(0, 128, n)
    b = np.where(kind == 3, r.integers(0, 1 << 16, n), b)
    a = np.where(r.random(n) < 0.05, _BF16_SPECIALS[r.integers(0, len(_BF16_SPECIALS), n)], a)
    b = np.where(r.random(n) < 0.05, _BF16_SPECIALS[r.integers(0, len(_BF16_SPECIALS), n)], b)
    return {"a": a.astype(np.uint16), "b": b.astype(np.uint16)}


def _random_fp32_to_bf16(r, n):
    hi = r.integers(0, 1 << 16, n)
    lo = r.integers(0, 1 << 16, n)
    pick = r.integers(0, 8, n)
    lo = np.where(pick == 0, 0x8000, lo)                          # ties
    lo = np.where(pick == 1, r.choice([0x7FFF, 0x8001, 0x0000, 0xFFFF], n), lo)
    hi = np.where(pick == 2, r.choice([0x7F7F, 0xFF7F, 0x7F80, 0xFF80, 0x0000, 0x8000, 0x0080,
                                       0x007F, 0x7FBF, 0x7FFF], n), hi)
    return {"a": ((hi << 16) | lo).astype(np.uint32)}


def _random_int8_mac(r, n):
    acc = r.integers(0, 1 << 32, n, dtype=np.uint64)
    pick = r.integers(0, 6, n)
    acc = np.where(pick == 0, r.choice([0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0, 0x7FFF0000,
                                        0x80007FFF], n), acc)
    acc = np.where(pick == 1, (0x7FFFFFFF - r.integers(0, 1 << 15, n)) & 0xFFFFFFFF, acc)
    acc = np.where(pick == 2, (0x80000000 + r.integers(0, 1 << 15, n)) & 0xFFFFFFFF, acc)
    return {"a": r.integers(0, 256, n).astype(np.uint8), "w": r.integers(0, 256, n).astype(np.uint8),
            "acc": acc.astype(np.uint32), "a_unsigned": r.integers(0, 2, n).astype(np.uint8)}


_RANDOM = {"int8_mac": _random_int8_mac, "bf16_mul": _random_bf16_mul,
           "fp32_add": _random_fp32_add, "fp32_to_bf16": _random_fp32_to_bf16}


def random_vectors(unit, n, seed):
    """``n`` biased random input vectors of ``unit`` (dict of field arrays), from ``seed``."""
    _check_unit(unit)
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, not {n!r}")
    return _RANDOM[unit](np.random.default_rng(seed), n)


def special_vectors(unit):
    """Deterministic vectors covering every special-value class of ``unit``:

    * fp32_add: every pair of the special values (±0, ±Inf, NaNs, subnormals, smallest normal,
      largest finite, ...), ties at the rounding point for every exponent difference 0..30 in
      both orders and signs, rounding carry into the exponent and overflow after rounding,
      cancellation to zero and to (sub)normal results;
    * bf16_mul: every pair of the bf16 special values, and every exponent pair with a few
      significands (every underflow and overflow boundary);
    * fp32_to_bf16: every upper half word (all exponents and signs) with the lower half words
      0x0000, 0x0001, 0x7FFF, 0x8000, 0x8001, 0xFFFF (ties, carries, overflow, NaN, subnormal);
    * int8_mac: every (a, w, a_unsigned) with the extreme accumulators.
    """
    _check_unit(unit)
    if unit == "fp32_add":
        s = _FP32_SPECIALS
        pa, pb = np.meshgrid(s, s)
        a, b = [pa.ravel()], [pb.ravel()]
        # ties and near-ties for every exponent difference, odd and even significands
        for d in range(0, 31):
            for ea in (1, 2, 24, 26, 100, 127, 200, 253, 254):
                eb = ea - d
                if eb < 1:
                    continue
                for ma in (0, 1, 2, 3, 0x7FFFFF, 0x7FFFFE, 0x400000, 0x555555):
                    for mb in (0, 1, 0x400000, 0x7FFFFF, 0x400001, 0x3FFFFF, 0x600000, 0x200000):
                        for sb in (0, 1):
                            a.append(_fp32(np.array([0, 1]), ea, ma))
                            b.append(_fp32(np.array([sb, sb ^ 1]), eb, mb))
        a = np.concatenate(a).astype(np.uint32)
        b = np.concatenate(b).astype(np.uint32)
        return {"a": np.concatenate([a, b]), "b": np.concatenate([b, a])}
    if unit == "bf16_mul":
        s = _BF16_SPECIALS
        pa, pb = np.meshgrid(s, s)
        ea, eb = np.meshgrid(np.arange(256), np.arange(256))
        ea, eb = ea.ravel(), eb.ravel()
        a, b = [pa.ravel()], [pb.ravel()]
        for ma, mb in ((0, 0), (0x7F, 0x7F), (0x7F, 0x01), (0x40, 0x00), (0x01, 0x7F)):
            for sa, sb in ((0, 0), (1, 0)):
                a.append((sa << 15) | (ea << 7) | ma)
                b.append((sb << 15) | (eb << 7) | mb)
        return {"a": np.concatenate(a).astype(np.uint16), "b": np.concatenate(b).astype(np.uint16)}
    if unit == "fp32_to_bf16":
        hi = np.arange(1 << 16, dtype=np.uint32)
        lo = np.array([0x0000, 0x0001, 0x7FFF, 0x8000, 0x8001, 0xFFFF], dtype=np.uint32)
        return {"a": ((hi[:, None] << 16) | lo[None, :]).ravel()}
    a, w, u = np.meshgrid(np.arange(256), np.arange(256), np.arange(2))
    a, w, u = a.ravel(), w.ravel(), u.ravel()
    accs = [0, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0x7FFF8000, 0x80007FFF]
    acc = np.array(accs, dtype=np.uint32)[np.arange(a.size) % len(accs)]
    return {"a": a.astype(np.uint8), "w": w.astype(np.uint8), "acc": acc,
            "a_unsigned": u.astype(np.uint8)}


# ------------------------------------------------------------------------------ bulk harness


#: Input words the bulk harness holds (a multiple of this is run in several passes).
BULK_DEPTH = 1 << 21

#: Unit number of each unit in the bulk harness (its ``unit`` input).
BULK_UNITS = {name: k for k, name in enumerate(UNITS)}


def core_latency(unit, stages=None):
    """Latency of ``unit``'s core built with ``stages`` (``None``: the default)."""
    from hdl import arith

    return getattr(arith, _check_unit(unit)[0]).latency_for(stages)


def bulk_build_params():
    """Cache-key parameters of :func:`bulk_verilog`: the harness text lives here, outside
    hdl/, so a digest of this file keeps sim.runner's Verilog cache honest."""
    import hashlib
    from pathlib import Path

    return {"harness": "bulk", "depth": BULK_DEPTH,
            "tb": hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]}


def bulk_verilog(name="arith_bulk", *, depth=BULK_DEPTH):
    """Verilog of a test-only top ``name`` that streams vectors from memory through the cores.

    The four cores of hdl/arith.py are converted from Amaranth unchanged (modules
    ``<name>_<unit>``); a hand-written harness around them holds ``depth`` packed input words
    (:func:`pack_inputs`, 64 bits) and ``depth`` 32-bit results, so the simulation runs without
    Python in the loop:

    * ``load`` (one cycle): ``$fread`` of ``bulk_inputs.bin`` (64-bit big-endian words) into
      the input memory (the simulation runs in the run folder);
    * ``start`` held high: the core selected by ``unit`` receives word ``k`` in the ``k``-th
      cycle where ``en`` is 1; ``en`` is low in a cycle with probability ``gap``/16 (a xorshift32
      generator seeded by ``seed``); every core output is stored at the en-cycle its valid bit
      (a shift register of the core's latency) says; ``done`` rises when ``count`` results are
      stored, ``cycles`` counts the cycles taken;
    * ``dump`` (one cycle): ``$writememh("bulk_outputs.hex")`` of results ``0 .. count-1``.
    """
    from amaranth.back import verilog

    from hdl import arith

    parts = []
    inst = []
    for unit, (core_name, _, fields, out_width, _, _) in UNITS.items():
        core = getattr(arith, core_name)()
        text = verilog.convert(core, name=f"{name}_{unit}", emit_src=False)
        parts.append(text.replace("(* top =  1  *)\n", ""))
        conns, offset = [], 0
        for field, width in fields.items():
            conns.append(f".{field}(word[{offset} +: {width}])")
            offset += width
        k = BULK_UNITS[unit]
        lat = core.latency
        inst.append(f"""
  wire [{out_width - 1}:0] y_{unit};
  {name}_{unit} core_{unit}(.clk(clk), .rst(rst), .en(en & (unit == {k})), {", ".join(conns)}, .y(y_{unit}));
  localparam LAT_{k} = {lat};""")
    sel_y = " : ".join(f"(unit == {BULK_UNITS[u]}) ? {{{32 - UNITS[u][3]}'d0, y_{u}}}"
                       if UNITS[u][3] < 32 else f"(unit == {BULK_UNITS[u]}) ? y_{u}" for u in UNITS)
    sel_lat = " : ".join(f"(unit == {k}) ? LAT_{k}" for k in range(len(UNITS)))
    aw = (depth - 1).bit_length()
    harness = f"""
module {name}(clk, rst, load, start, dump, unit, count, gap, seed, done, cycles);
  input clk;
  input rst;
  input load;
  input start;
  input dump;
  input [1:0] unit;
  input [31:0] count;
  input [3:0] gap;
  input [31:0] seed;
  output reg done;
  output reg [31:0] cycles;
  reg [63:0] mem_in [0:{depth - 1}];
  reg [31:0] mem_out [0:{depth - 1}];
  reg [31:0] rd;
  reg [31:0] wr;
  reg [31:0] rng;
  reg [7:0] vpipe;
  integer fd;
  integer nread;
  wire [31:0] rng1 = rng ^ (rng << 13);
  wire [31:0] rng2 = rng1 ^ (rng1 >> 17);
  wire [31:0] rng_next = rng2 ^ (rng2 << 5);
  wire en = start & ~done & ~(rng[3:0] < gap);
  wire [63:0] word = mem_in[rd[{aw - 1}:0]];
{"".join(inst)}
  wire [31:0] y = {sel_y} : 32'd0;
  wire [3:0] lat = {sel_lat} : 4'd1;
  wire y_valid = vpipe[lat - 4'd1];
  always @(posedge clk) begin
    if (load) begin
      fd = $fopen("bulk_inputs.bin", "rb");
      nread = $fread(mem_in, fd);
      $fclose(fd);
    end
    if (dump) $writememh("bulk_outputs.hex", mem_out, 0, count - 1);
    if (rst) begin
      rd <= 0;
      wr <= 0;
      vpipe <= 0;
      done <= 0;
      cycles <= 0;
      rng <= seed | 32'd1;
    end else if (start & ~done) begin
      rng <= rng_next;
      cycles <= cycles + 1;
      if (wr == count) done <= 1;
      if (en) begin
        vpipe <= {{vpipe[6:0], rd < count}};
        if (rd < count) rd <= rd + 1;
        if (y_valid) begin
          mem_out[wr[{aw - 1}:0]] <= y;
          wr <= wr + 1;
        end
      end
    end
  end
endmodule
"""
    return "".join(parts) + harness


def streams_top(config="default"):
    """A test-only top holding the four stream units exactly as hdl/tops.py builds them for
    ``config``, side by side in one Verilator build (one build instead of four). Unit ``u``'s
    ports keep their names under ``u``: ``u__i__valid``, ``u__o__payload``, …; ``clk`` and
    ``rst`` are shared."""
    from amaranth.hdl import Module
    from amaranth.lib import wiring
    from amaranth.lib.wiring import Out

    from hdl.tops import elaborate_top

    units = {unit: elaborate_top(unit, config) for unit in UNITS}

    class ArithStreams(wiring.Component):
        def __init__(self):
            super().__init__({unit: Out(dut.signature) for unit, dut in units.items()})

        def elaborate(self, platform):
            m = Module()
            for unit, dut in units.items():
                m.submodules[unit] = dut
                wiring.connect(m, wiring.flipped(getattr(self, unit)), dut)
            return m

    return ArithStreams()


def streams_build_params(config="default"):
    """Cache-key parameters of :func:`streams_top` (see :func:`bulk_build_params`)."""
    return {**bulk_build_params(), "harness": "streams", "config": config}


# ------------------------------------------------------------------------------ cocotb tests

try:
    import cocotb
except ImportError:  # pragma: no cover - the vectors are usable without cocotb
    cocotb = None

if cocotb is not None:
    import time

    from cocotb.clock import Clock
    from cocotb.triggers import ReadOnly, RisingEdge

    from .common import load_inputs, save_outputs

    def _write_words(path, words):
        # $fread fills each 64-bit memory word from 8 bytes, most significant first
        path.write_bytes(np.ascontiguousarray(words, dtype=">u8").tobytes())

    def _read_hex(path):
        data = path.read_bytes()
        if len(data) % 9 == 0 and data[8::9] == b"\n" * (len(data) // 9):  # 8 digits a line
            return np.frombuffer(bytes.fromhex(data.replace(b"\n", b"").decode()), ">u4").astype(np.uint32)
        lines = [x for x in data.decode().split() if not x.startswith(("//", "@"))]
        return np.array([int(x, 16) for x in lines], dtype=np.uint32)

    @cocotb.test()
    async def bulk_vectors(dut):
        """Push ``inputs`` (packed words) through the core ``unit`` of the bulk harness, in
        passes of at most BULK_DEPTH words, with ``en`` low at random cycles with probability
        ``gap``/16 (seeded by ``seed``); save the outputs as ``y``, the cycles as ``cycles`` and
        the host time of the simulation loops (without file transfers) as ``sim_seconds``.
        A pass that does not finish within 2 × its worst-case cycle count fails."""
        from cocotb.triggers import First, Timer

        from .common import run_dir

        arrays, meta = load_inputs()
        words = arrays["inputs"].astype(np.uint64)
        unit = meta["unit"]
        gap = int(meta.get("gap", 0))
        seed = int(meta.get("seed", 1))
        depth = int(meta.get("depth", BULK_DEPTH))
        cocotb.log.info("bulk_vectors: unit %s, %d vectors, en gap %d/16, seed %d",
                        unit, words.size, gap, seed)
        # the clock toggles in the simulator's C++ layer: no Python per cycle
        Clock(dut.clk, 10, unit="ns", impl="gpi").start()
        for sig in (dut.load, dut.start, dump := dut.dump):
            sig.value = 0
        dut.unit.value = BULK_UNITS[unit]
        dut.gap.value = gap
        outs, cycles, sim_seconds = [], 0, 0.0
        for k, first in enumerate(range(0, words.size, depth)):
            chunk = words[first:first + depth]
            _write_words(run_dir() / "bulk_inputs.bin", chunk)
            dut.count.value = chunk.size
            dut.seed.value = (seed + k) & 0xFFFFFFFF
            dut.rst.value = 1
            dut.load.value = 1
            await RisingEdge(dut.clk)
            dut.load.value = 0
            await RisingEdge(dut.clk)
            dut.rst.value = 0
            dut.start.value = 1
            limit = 2 * (chunk.size * 16 // (16 - gap) + 100)
            t0 = time.perf_counter()
            await First(RisingEdge(dut.done), Timer(limit * 10, unit="ns"))
            sim_seconds += time.perf_counter() - t0
            await ReadOnly()
            assert dut.done.value == 1, f"pass {k}: not done after {limit} cycles"
            await RisingEdge(dut.clk)
            cycles += int(dut.cycles.value)
            dut.start.value = 0
            dump.value = 1
            await RisingEdge(dut.clk)
            dump.value = 0
            await RisingEdge(dut.clk)
            outs.append(_read_hex(run_dir() / "bulk_outputs.hex"))
        save_outputs(y=np.concatenate(outs) if outs else np.zeros(0, np.uint32),
                     cycles=np.array(cycles), sim_seconds=np.array(sim_seconds))
