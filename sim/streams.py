"""Run a design's streams through the stream testbench (:mod:`sim.tb.streams`); the layer under
every ``sim.run_*`` API.

An API turns its operation into payload words per input stream (:mod:`sim.packing`), calls
:func:`run_streams`, and decodes the words that came out into a :class:`sim.SimResult`.
"""

import os
import random
from dataclasses import dataclass, field

import numpy as np

from .packing import rows_to_words, words_to_rows

__all__ = ["run_streams", "StreamRun", "check_probability", "new_seed", "random_pause", "DEFAULT_TIMEOUT_CYCLES"]

#: Cycles without a handshake on any stream after which a run fails (the design hangs).
DEFAULT_TIMEOUT_CYCLES = 20_000


def check_probability(name, p):
    """``p`` if it is a probability in [0, 1); else ``ValueError`` naming ``name``."""
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
        raise ValueError(f"{name} must be a probability in [0, 1), not {p!r}")
    return float(p)


def random_pause(probability, seed=None):
    """A pause generator (testbench kit, :mod:`sim.tb.common`; amaranth.sim,
    :mod:`sim.amaranth_streams`): ``True`` (pause) in each cycle with ``probability``, from
    ``seed`` (an int or a ``random.Random``). ``None`` when ``probability`` is 0 (never pause,
    no draws)."""
    if isinstance(probability, bool) or not isinstance(probability, (int, float)) or not 0 <= probability < 1:
        raise ValueError(f"pause probability must be in [0, 1), not {probability!r}")
    if not probability:
        return None
    rand = seed if isinstance(seed, random.Random) else random.Random(seed)

    def generate():
        draw = rand.random
        while True:
            yield draw() < probability
    return generate()


def new_seed(seed):
    """``seed`` as an int; a random one when it is ``None``."""
    if seed is None:
        return int.from_bytes(os.urandom(4), "little")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int or None, not {seed!r}")
    return int(seed)


@dataclass
class StreamRun:
    """What came out of :func:`run_streams`.

    ``beats[name]``: the payloads (ints) of output stream ``name``; ``accepted_at[name]``: the
    cycle of every accepted beat of every stream (inputs too); ``taps[name]``: (values, cycles)
    of a tap (values int64, or an object array of ints for a signal wider than 56 bits);
    ``counts``: the event counts by name (empty without ``counters``); ``cycles``: cycles from
    reset release to the last handshake, inclusive; ``sim_seconds``: host time of the
    simulation loop.
    """
    beats: dict
    accepted_at: dict
    taps: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)
    cycles: int = 0
    sim_seconds: float = 0.0
    seed: int = 0


def _tap_values(rows):
    """A tap's recorded values from their byte rows: int64, or Python ints (an object array) for a
    signal wider than 56 bits."""
    words = rows_to_words(rows)
    if rows.shape[1] <= 7:
        return np.array(words, np.int64)
    out = np.empty(len(words), object)
    out[:] = words
    return out


def run_streams(design, *, sources, sinks, taps=None, counters=None, counter_width=48, stall=0.0,
                backpressure=0.0, seed=None, timeout_cycles=DEFAULT_TIMEOUT_CYCLES, tail_cycles=32,
                max_cycles=None, registered_outputs=False):
    """Drive ``sources`` into ``design`` and collect ``sinks``; return a :class:`StreamRun`.

    Parameters
    ----------
    design : sim.runner.Design
    sources : dict of str → sequence of int
        Input stream name (the port prefix, e.g. ``"cmd"``) → its payloads, in order.
    sinks : dict of str → int or None
        Output stream name → the number of beats the run waits for; ``None``: wait until the
        stream's ``valid`` has been low for ``tail_cycles`` cycles in a row.
    taps : dict of str → (str, str), optional
        Name → (signal, enable signal): record the signal's value in every cycle the enable is 1.
    counters : sequence of str, optional
        The names of the design's ``counts`` port fields (``counter_width`` bits each), read
        at the end.
    stall, backpressure : float
        Probability of a valid gap on each input stream / of ready low on each output stream,
        per cycle.
    seed : int or None
        Seed of the gaps and backpressure (random if None; printed).
    timeout_cycles : int
        The run fails when no stream makes a handshake for this many cycles.
    tail_cycles : int
        Cycles every sink stays ready after the run is done, so extra beats are recorded.
    max_cycles : int, optional
        The run fails when it is not done after this many cycles.
    registered_outputs : bool
        The design's stream outputs depend on its registers alone: the testbench reads them in
        the callback that writes the inputs (:class:`sim.tb.common.ClockLoop`), 1.35 times
        faster. Wrong for any other design.

    Raises
    ------
    sim.runner.SimulationError
        The testbench failed (a timeout names every stream's progress).
    """
    from . import runner

    stall = check_probability("stall", stall)
    backpressure = check_probability("backpressure", backpressure)
    seed = new_seed(seed)
    data = {f"in_{name}": words_to_rows(words) for name, words in sources.items()}
    data.update(sources=list(sources), sinks=dict(sinks), taps=dict(taps or {}),
                counters=list(counters or []), counter_width=counter_width, stall=stall,
                backpressure=backpressure, seed=seed, timeout_cycles=int(timeout_cycles),
                tail_cycles=int(tail_cycles), max_cycles=max_cycles, registered_outputs=bool(registered_outputs))
    out = runner.run(design, "sim.tb.streams", testcase="streams", data=data, seed=seed)
    beats = {name: rows_to_words(out[f"out_{name}"]) for name in sinks}
    accepted = {name: out[f"cyc_{name}"] for name in (*sources, *sinks)}
    tap_out = {name: (_tap_values(out[f"tap_{name}"]), out[f"tapcyc_{name}"]) for name in (taps or {})}
    counts = dict(zip(counters or [], (int(c) for c in out.get("counts", [])), strict=True))
    last = max([int(a[-1]) for a in accepted.values() if len(a)] or [-1])
    return StreamRun(beats=beats, accepted_at=accepted, taps=tap_out, counts=counts, cycles=last + 1,
                     sim_seconds=float(out["sim_seconds"]), seed=seed)
