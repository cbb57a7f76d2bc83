"""``sim.run_kvcache``: run a list of KV-cache commands on the Verilated controller.

Example::

    from golden.kvcache import KVCommand, KVOp
    result = sim.run_kvcache([KVCommand(KVOp.ALLOC, 7), KVCommand(KVOp.APPEND, 7, k=k, v=v),
                              KVCommand(KVOp.READ_K, 7, head=0, start=0, count=1)], config="tiny")
    result.responses[2]   # (status 0, op 2, length 1, pages 1, free_pages 15)
    result.reads[2]       # the [1, head_dim] K rows, dtype int8 or bfloat16
    result.read_beats[2]  # the same as the stream's beats [beats, beat_elems], in READ order

A READ's ``block``/``group`` fields choose its beat order (golden.kvcache.read_order); ``reads``
puts the rows back in position order, ``read_beats`` keeps the order of the stream.

The design is the controller with its K/V data memory (``hdl.memport.SyncMemory``) and its
event counters around it (``hdl.standalone.Standalone``); the stream testbench
(:mod:`sim.tb.streams`) plays the commands and their APPEND data and records every response,
every read beat and the address of every K/V memory write. Words never written read as 0.
"""

import ml_dtypes
import numpy as np

from golden.kvcache import KVCommand, KVOp, KVResponse, KVStatus, read_order
from hdl.config import get_config

from .packing import pack_fields, pack_lanes, unpack_fields, unpack_lanes
from .result import SimResult
from .runner import SimulationError, build
from .streams import check_probability, run_streams

__all__ = ["run_kvcache", "kvcache_design", "encode_commands", "decode_results"]

_READS = (KVOp.READ_K, KVOp.READ_V)


def kvcache_design(config="default"):
    """The (cached) Verilator build of the controller of ``config`` with its K/V memory and
    event counters (``hdl.standalone.Standalone``); also returns the counter names."""
    from hdl.kvcache import KVCacheController
    from hdl.standalone import Standalone

    cfg = get_config(config)

    def top():
        ctrl = KVCacheController.from_config(cfg)
        return Standalone(ctrl, memories={"mem": ctrl.mem_words})
    return build(top, "kv_cache", params={"kvcache": cfg.kvcache.to_dict(), "top": "standalone"})


def _as_command(i, cmd):
    if isinstance(cmd, KVCommand):
        return cmd
    if isinstance(cmd, dict):
        return KVCommand(**cmd)
    if isinstance(cmd, (tuple, list)):
        return KVCommand(*cmd)
    raise TypeError(f"command {i} must be a KVCommand, tuple or dict, not {type(cmd).__name__}")


def encode_commands(commands, ctrl):
    """(command payloads, append-data payloads) of ``commands`` for the controller ``ctrl`` (a
    ``KVCacheParams``). Raises ValueError/TypeError naming the command and field that does not
    fit."""
    limits = {"op": 7, "seq": (1 << 16) - 1, "head": 255,
              "start": (1 << ctrl.length_bits) - 1, "count": (1 << ctrl.length_bits) - 1,
              "block": (1 << ctrl.length_bits) - 1, "group": (1 << ctrl.group_bits) - 1}
    np_dtype = np.dtype(np.int8) if ctrl.dtype == "int8" else np.dtype(ml_dtypes.bfloat16)
    raw = np.uint8 if ctrl.dtype == "int8" else np.uint16
    bpr = ctrl.beats_per_row
    words, wdata = [], []
    for i, cmd in enumerate(commands):
        cmd = _as_command(i, cmd)
        for name, limit in limits.items():
            value = getattr(cmd, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
                raise TypeError(f"command {i}: {name} must be an int, not {value!r}")
            if not 0 <= int(value) <= limit:
                raise ValueError(f"command {i}: {name} must be in 0..{limit}, not {value}")
        words.append(pack_fields(ctrl.cmd_layout, {name: getattr(cmd, name) for name in limits}))
        if cmd.op == KVOp.APPEND:
            for name in ("k", "v"):
                rows = getattr(cmd, name)
                if not isinstance(rows, np.ndarray) or rows.dtype != np_dtype:
                    raise TypeError(f"command {i}: APPEND {name} must be a numpy array of "
                                    f"{ctrl.dtype}, not {getattr(rows, 'dtype', type(rows).__name__)}")
                if rows.shape != (ctrl.kv_heads, ctrl.head_dim):
                    raise ValueError(f"command {i}: APPEND {name} must have shape "
                                     f"{(ctrl.kv_heads, ctrl.head_dim)}, not {rows.shape}")
                wdata.append(np.ascontiguousarray(rows).view(raw).reshape(ctrl.kv_heads * bpr, ctrl.beat_elems))
    w = pack_lanes(np.concatenate(wdata), ctrl.elem_bits) if wdata else []
    return words, w


def decode_results(commands, ctrl, resp_words, rdata_words):
    """The outputs of :func:`run_kvcache` (``responses``, ``reads``, ``read_beats``, ``rdata``,
    ``last``) from the response and read-beat payloads of ``commands`` on the controller
    ``ctrl`` (a ``KVCacheParams``). Raises ``SimulationError`` when the counts do not match
    the commands and their responses."""
    if len(resp_words) != len(commands):
        raise SimulationError(f"{len(commands)} commands but {len(resp_words)} responses")
    fields = unpack_fields(ctrl.resp_layout, resp_words)
    responses = np.zeros(len(resp_words), dtype=[(name, np.int64) for name in KVResponse._fields])
    for name in KVResponse._fields:
        responses[name] = fields[name]
    B, bpr = ctrl.beat_elems, ctrl.beats_per_row
    lanes = unpack_lanes(rdata_words, B, 16)
    last = np.array([bool(w >> (16 * B)) for w in rdata_words], dtype=bool)
    ok_reads = [i for i, c in enumerate(commands) if c.op in _READS and responses["status"][i] == KVStatus.OK]
    expected = sum(int(commands[i].count) * bpr for i in ok_reads)
    if len(rdata_words) != expected:
        raise SimulationError(f"{len(rdata_words)} read beats, but the successful READs ask for {expected}")
    reads = np.empty(len(commands), object)
    read_beats = np.empty(len(commands), object)
    pos = 0
    for i in ok_reads:
        cmd = commands[i]
        n = int(cmd.count) * bpr
        stream = lanes[pos:pos + n]
        pos += n
        if ctrl.dtype == "int8":
            stream = stream.view(np.int16).astype(np.int8)
        else:
            stream = stream.copy().view(ml_dtypes.bfloat16)
        rows = np.empty((int(cmd.count), bpr, B), stream.dtype)
        order = read_order(cmd.start, cmd.count, cmd.block, cmd.group, bpr)
        rows[order[:, 0] - int(cmd.start), order[:, 1]] = stream
        read_beats[i] = stream
        reads[i] = rows.reshape(int(cmd.count), ctrl.head_dim)
    return {"responses": responses, "reads": reads, "read_beats": read_beats, "rdata": lanes, "last": last}


def run_kvcache(commands, *, config="default", stall=0.0, backpressure=0.0, seed=None,
                timeout_cycles=2_000, tail_cycles=32, max_cycles=None):
    """Run ``commands`` (golden.KVCommand, or tuples/dicts of its fields) through the RTL.

    Parameters
    ----------
    commands : sequence of golden.KVCommand
        Run in order; every APPEND's K and V rows follow it on the ``wdata`` stream.
    config : str or ChipConfig
        The configuration (its ``kvcache`` part).
    stall, backpressure : float in [0, 1)
        Probability of a valid gap on ``cmd`` and ``wdata`` / of ready low on ``resp`` and
        ``rdata``, per cycle.
    seed : int or None
        Seed of the gaps and backpressure (random if None; printed).
    timeout_cycles : int
        The run fails when no stream makes a handshake for this many cycles (at least 4 × the
        free-list initialization).
    tail_cycles : int
        After the last response, the run waits until ``rdata`` has been idle this long and then
        as long again, so extra beats are caught.
    max_cycles : int, optional
        The run fails when it takes longer.

    Returns
    -------
    SimResult
        ``outputs``: ``responses`` (the main output: a structured array of the response
        fields ``status``, ``op``, ``length``, ``pages``, ``free_pages``, one per command);
        ``reads`` (per command, an object array: the [count, head_dim] rows of a successful
        READ in position order, int8 or ``ml_dtypes.bfloat16``, else None); ``read_beats``
        (per command: the READ's beats [count · beats_per_row, beat_elems] in stream order,
        else None); ``rdata`` (every read beat's 16-bit lanes as sent, int8 sign-extended);
        ``last`` (every read beat's flag); ``mem_writes`` (the K/V memory address of every
        write, in order); ``cmd_cycles``, ``wdata_cycles``, ``resp_cycles``, ``rdata_cycles``
        (the cycle of every accepted beat). ``counters``: the controller's event counts.

    Raises
    ------
    TypeError, ValueError
        A command field of the wrong type or out of range, APPEND rows of the wrong dtype or
        shape, a bad probability; the message names the command and field.
    sim.runner.SimulationError
        No handshake for ``timeout_cycles`` cycles, more than ``max_cycles`` cycles, or a
        response or read-beat count that does not match the commands.
    """
    from hdl.kvcache import KVCacheParams

    cfg = get_config(config)
    ctrl = KVCacheParams.from_config(cfg)
    stall, backpressure = check_probability("stall", stall), check_probability("backpressure", backpressure)
    commands = [_as_command(i, c) for i, c in enumerate(commands)]
    cmd_words, w_words = encode_commands(commands, ctrl)
    design = kvcache_design(cfg)
    events = [name for name, _ in ctrl.events_layout]
    run = run_streams(design, sources={"cmd": cmd_words, "wdata": w_words},
                      sinks={"resp": len(cmd_words), "rdata": None},
                      taps={"mem_writes": ("mem__waddr", "mem__wen")}, counters=events,
                      stall=stall, backpressure=backpressure, seed=seed,
                      timeout_cycles=max(int(timeout_cycles), 4 * ctrl.init_cycles), tail_cycles=tail_cycles,
                      max_cycles=max_cycles)
    print(f"run_kvcache: config={cfg.name} seed={run.seed} commands={len(commands)}")
    try:
        outputs = decode_results(commands, ctrl, run.beats["resp"], run.beats["rdata"])
    except SimulationError as exc:
        raise SimulationError(f"{exc} (seed {run.seed})") from None
    outputs["mem_writes"] = run.taps["mem_writes"][0]
    outputs.update({f"{name}_cycles": stamps for name, stamps in run.accepted_at.items()})
    return SimResult(outputs=outputs, counters=run.counts, seed=run.seed, cycles=run.cycles, main="responses")
