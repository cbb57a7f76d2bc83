"""``sim.run_kvcache``: run a list of KV-cache commands on the Verilated controller.

Example::

    from golden.kvcache import KVCommand, KVOp
    result = run_kvcache([KVCommand(KVOp.ALLOC, 7), KVCommand(KVOp.APPEND, 7, k=k, v=v),
                          KVCommand(KVOp.READ_K, 7, head=0, start=0, count=1)], config="tiny")
    result.responses[2]   # KVResponse(status=0, op=2, length=1, pages=1, free_pages=15)
    result.reads[2]       # the [1, head_dim] K rows, dtype int8 or bfloat16
    result.read_beats[2]  # the same as the stream's beats [beats, beat_elems], in READ order

A READ's ``block``/``group`` fields choose its beat order (golden.kvcache.read_order); ``reads``
puts the rows back in position order, ``read_beats`` keeps the order of the stream.

The test harness (sim/tb/kvcache_harness.v, driven by sim/tb/kvcache.py) plays the commands
at simulator speed and models the controller's external K/V memory; words never written read
as a sentinel (0xA5 bytes), so a read of memory that no APPEND wrote shows up as wrong data.
"""

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import ml_dtypes
import numpy as np
from amaranth.hdl import Shape

from golden.kvcache import KVCommand, KVOp, KVResponse, KVStatus, read_order
from hdl.config import get_config

from .runner import SimulationError, build, run

__all__ = ["run_kvcache", "KVRunResult", "kvcache_design", "encode_commands"]

_READS = (KVOp.READ_K, KVOp.READ_V)


@dataclass
class KVRunResult:
    """What :func:`run_kvcache` returns.

    Attributes
    ----------
    responses : list of golden.KVResponse
        One per command, in order.
    reads : list
        Per command: the [count, head_dim] rows of a successful READ_K/READ_V (int8 or
        ``ml_dtypes.bfloat16``) in position order, else None.
    read_beats : list
        Per command: the [count · beats_per_row, beat_elems] beats of a successful READ in the
        order they were streamed (the command's ``block``/``group`` order), same dtype, else
        None.
    lanes : ndarray of uint16, [beats, beat_elems]
        Every read-data beat as the hardware sent it (int8 sign-extended to 16 bits).
    last : ndarray of bool, [beats]
        The ``last`` flag of every beat.
    counters : dict
        ``cycles`` (from reset release to the last handshake), ``read_beats``,
        ``append_beats``, ``expected_read_beats``, and per-handshake cycle stamps
        ``read_cycles``, ``append_cycles``, ``cmd_cycles``, ``resp_cycles`` (arrays);
        ``write_addrs``: the K/V memory address of every write, in order.
    seed : int
        The testbench's random seed (valid gaps, backpressure).
    """
    responses: list
    reads: list
    lanes: np.ndarray
    last: np.ndarray
    counters: dict = field(default_factory=dict)
    seed: int = 0
    read_beats: list = field(default_factory=list)


#: Capacity of the harness's command and result memories (a run may not exceed them).
MAX_COMMANDS = 1 << 15
MAX_APPEND_BEATS = 1 << 19
MAX_READ_BEATS = 1 << 20

_HARNESS = Path(__file__).parent / "tb" / "kvcache_harness.v"


def harness_verilog(config="tiny"):
    """Verilog text of the controller for ``config`` plus the test harness around it."""
    from amaranth.back import verilog

    from hdl.kvcache import KVCacheController, KVCacheParams
    p = KVCacheParams.from_config(get_config(config))
    text = verilog.convert(KVCacheController.from_config(get_config(config)), name="kv_cache",
                           emit_src=False)
    fill = {
        "CMD_W": p.cmd_layout.size, "WD_W": p.beat_elems * p.elem_bits,
        "RESP_W": p.resp_layout.size, "RD_W": p.rdata_layout.size, "MEM_AW": p.mem_addr_bits,
        "MEM_D": p.mem_words, "MAX_CMD": MAX_COMMANDS, "MAX_WD": MAX_APPEND_BEATS,
        "MAX_RD": MAX_READ_BEATS,
        "SENTINEL": f"{p.beat_elems * p.elem_bits}'h" + "a5" * (p.beat_elems * p.elem_bits // 8),
    }
    harness = _HARNESS.read_text()
    for key, value in fill.items():
        harness = harness.replace(f"@{key}@", str(value))
    return text + "\n" + harness


def kvcache_design(config="tiny"):
    """The (cached) Verilator build of the controller and its harness for ``config``."""
    cfg = get_config(config)
    params = cfg.kvcache.to_dict()
    params["harness"] = hashlib.sha256(_HARNESS.read_bytes()).hexdigest()[:16]
    return build(lambda: harness_verilog(cfg), "kv_cache_harness", params=params)


def _as_command(i, cmd):
    if isinstance(cmd, KVCommand):
        return cmd
    if isinstance(cmd, dict):
        return KVCommand(**cmd)
    if isinstance(cmd, (tuple, list)):
        return KVCommand(*cmd)
    raise TypeError(f"command {i} must be a KVCommand, tuple or dict, not {type(cmd).__name__}")


def encode_commands(commands, ctrl):
    """(cmd words [n, bytes] uint8, append-data words [beats, bytes] uint8, read beats per
    command if it succeeds) for the controller ``ctrl``. Raises ValueError/TypeError naming the
    command and field that does not fit."""
    layout = ctrl.cmd_layout
    limits = {"op": 7, "seq": (1 << 16) - 1, "head": 255,
              "start": (1 << ctrl.length_bits) - 1, "count": (1 << ctrl.length_bits) - 1,
              "block": (1 << ctrl.length_bits) - 1, "group": (1 << ctrl.group_bits) - 1}
    np_dtype = np.dtype(np.int8) if ctrl.dtype == "int8" else np.dtype(ml_dtypes.bfloat16)
    raw = np.uint8 if ctrl.dtype == "int8" else np.uint16
    cmd_bytes = (layout.size + 7) // 8
    word_bytes = ctrl.beat_elems * ctrl.elem_bits // 8
    bpr = ctrl.beats_per_row
    words, wdata, rbeats = [], [], []
    for i, cmd in enumerate(commands):
        cmd = _as_command(i, cmd)
        word = 0
        for name, limit in limits.items():
            value = getattr(cmd, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
                raise TypeError(f"command {i}: {name} must be an int, not {value!r}")
            if not 0 <= int(value) <= limit:
                raise ValueError(f"command {i}: {name} must be in 0..{limit}, not {value}")
            word |= int(value) << layout[name].offset
        words.append(word.to_bytes(cmd_bytes, "little"))
        if cmd.op == KVOp.APPEND:
            for name in ("k", "v"):
                rows = getattr(cmd, name)
                if not isinstance(rows, np.ndarray) or rows.dtype != np_dtype:
                    raise TypeError(f"command {i}: APPEND {name} must be a numpy array of "
                                    f"{ctrl.dtype}, not {getattr(rows, 'dtype', type(rows).__name__)}")
                if rows.shape != (ctrl.kv_heads, ctrl.head_dim):
                    raise ValueError(f"command {i}: APPEND {name} must have shape "
                                     f"{(ctrl.kv_heads, ctrl.head_dim)}, not {rows.shape}")
                wdata.append(np.ascontiguousarray(rows).view(raw).view(np.uint8)
                             .reshape(ctrl.kv_heads * bpr, word_bytes))
        rbeats.append(int(cmd.count) * bpr if cmd.op in _READS else 0)
    cmd_arr = np.frombuffer(b"".join(words), np.uint8).reshape(len(words), cmd_bytes)
    w_arr = (np.concatenate(wdata) if wdata else np.zeros((0, word_bytes), np.uint8))
    return cmd_arr, w_arr, np.array(rbeats, np.int64)


def run_kvcache(commands, *, config="tiny", seed=None, cmd_stall=0.0, data_stall=0.0,
                resp_backpressure=0.0, read_backpressure=0.0, timeout_cycles=2_000,
                tail_cycles=32, max_cycles=None):
    """Run ``commands`` (golden.KVCommand, or tuples/dicts of its fields) through the RTL.

    ``cmd_stall``/``data_stall`` are the probabilities of an empty cycle before a command /
    append-data beat; ``resp_backpressure``/``read_backpressure`` of ready low in a cycle.
    ``seed`` (printed) seeds them. Returns a :class:`KVRunResult`. Raises
    :class:`sim.runner.SimulationError` if the hardware makes no handshake for
    ``timeout_cycles`` cycles or the run exceeds ``max_cycles``. After the last expected beat
    the harness watches ``tail_cycles`` more cycles, so extra beats are caught.
    At most MAX_COMMANDS − 1 commands, MAX_APPEND_BEATS − 1 append beats and
    MAX_READ_BEATS − 1 read beats per run.
    """
    from hdl.kvcache import KVCacheParams
    cfg = get_config(config)
    ctrl = KVCacheParams.from_config(cfg)
    commands = [_as_command(i, c) for i, c in enumerate(commands)]
    for name, p in (("cmd_stall", cmd_stall), ("data_stall", data_stall),
                    ("resp_backpressure", resp_backpressure),
                    ("read_backpressure", read_backpressure)):
        if not isinstance(p, (int, float)) or not 0 <= p < 1:
            raise ValueError(f"{name} must be a probability in [0, 1), not {p!r}")
    cmd_arr, w_arr, rbeats = encode_commands(commands, ctrl)
    for what, n, limit in (("commands", len(cmd_arr), MAX_COMMANDS),
                           ("append beats", len(w_arr), MAX_APPEND_BEATS),
                           ("read beats", int(rbeats.sum()), MAX_READ_BEATS)):
        if n >= limit:
            raise ValueError(f"{n} {what} in one run; at most {limit - 1} (split the list)")
    if seed is None:
        seed = int.from_bytes(os.urandom(4), "little")
    print(f"run_kvcache: config={cfg.name} seed={seed} commands={len(commands)}")
    rdata_bytes = (ctrl.rdata_layout.size + 7) // 8
    out = run(kvcache_design(cfg), "sim.tb.kvcache", testcase="kvcache_stream", data={
        "cmd": cmd_arr, "wdata": w_arr, "cmd_rbeats": rbeats, "seed": seed,
        "cmd_stall": cmd_stall, "data_stall": data_stall,
        "resp_backpressure": resp_backpressure, "read_backpressure": read_backpressure,
        "timeout_cycles": max(int(timeout_cycles), 4 * ctrl.init_cycles),
        "tail_cycles": tail_cycles, "rdata_bytes": rdata_bytes,
        "max_cycles": max_cycles or 100 * (len(cmd_arr) + len(w_arr) + int(rbeats.sum()))
        + 10 * ctrl.init_cycles + 10_000,
    })
    rl = ctrl.resp_layout
    responses = []
    for row in out["resp"]:
        word = int.from_bytes(row.tobytes(), "little")
        f = {name: (word >> rl[name].offset) & ((1 << Shape.cast(rl[name].shape).width) - 1)
             for name in ("status", "op", "length", "pages", "free_pages")}
        responses.append(KVResponse(**f))
    B = ctrl.beat_elems
    beats = [int.from_bytes(r.tobytes(), "little") for r in out["rdata"]]
    lanes = np.frombuffer(b"".join((b & ((1 << (16 * B)) - 1)).to_bytes(2 * B, "little")
                                   for b in beats), "<u2").reshape(len(beats), B)
    last = np.array([bool(b >> (16 * B)) for b in beats], dtype=bool)
    reads, read_beats, pos = [], [], 0
    bpr = ctrl.beats_per_row
    if len(responses) != len(commands):
        raise SimulationError(f"{len(commands)} commands but {len(responses)} responses "
                              f"(seed {seed})")
    for cmd, resp in zip(commands, responses, strict=True):
        if cmd.op in _READS and resp.status == KVStatus.OK:
            n = int(cmd.count) * bpr
            stream = lanes[pos:pos + n]
            pos += n
            if ctrl.dtype == "int8":
                stream = stream.view(np.int16).astype(np.int8)
            else:
                stream = stream.copy().view(ml_dtypes.bfloat16)
            rows = np.empty((int(cmd.count), bpr, B), stream.dtype)
            order = read_order(cmd.start, cmd.count, cmd.block, cmd.group, bpr)
            rows[order[:, 0] - int(cmd.start), order[:, 1]] = stream  # too few beats: raises
            read_beats.append(stream)
            reads.append(rows.reshape(int(cmd.count), ctrl.head_dim))
        else:
            reads.append(None)
            read_beats.append(None)
    counters = {
        "cycles": 1 + max([int(out[k][-1]) for k in ("read_cycles", "append_cycles", "cmd_cycles",
                                                     "resp_cycles") if len(out[k])] or [-1]),
        "read_beats": len(beats), "append_beats": len(w_arr),
        "expected_read_beats": int(out["expected_read_beats"]),
        "read_cycles": out["read_cycles"], "append_cycles": out["append_cycles"],
        "cmd_cycles": out["cmd_cycles"], "resp_cycles": out["resp_cycles"],
        "write_addrs": out["write_addrs"],
    }
    return KVRunResult(responses=responses, reads=reads, lanes=lanes, last=last,
                       counters=counters, seed=seed, read_beats=read_beats)
