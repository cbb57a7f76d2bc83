"""What every ``sim.run_*`` returns: :class:`SimResult`."""

from dataclasses import dataclass, field

__all__ = ["SimResult"]


@dataclass
class SimResult:
    """The result of one simulation run of a block.

    Attributes
    ----------
    outputs : dict of str → numpy array
        Everything the run produced, by name: the block's results (decoded into the dtypes of
        the golden model) and the testbench's records (cycle stamps of every accepted beat,
        ``<stream>_cycles``; other records a block's API documents). Each output is also an
        attribute: ``result.reads`` is ``result.outputs["reads"]``.
    counters : dict of str → int
        The block's event counts (its ``events`` port through ``hdl.counters.EventCounters``,
        docs/conventions.md): ``busy``, ``stall_*``, ``beats_in``, … for the whole run.
    seed : int
        The seed of the run's random valid gaps and backpressure (logged; pass it back to
        reproduce the run).
    cycles : int
        Clock cycles from reset release to the last handshake on any stream, inclusive.
    main : str
        The name of the main output, :attr:`output`.
    """

    outputs: dict
    counters: dict
    seed: int
    cycles: int
    main: str = field(default=None)

    @property
    def output(self):
        """The main output, ``outputs[main]``."""
        return self.outputs[self.main]

    def __getattr__(self, name):
        # only called for names that are not attributes: the outputs by name
        outputs = self.__dict__.get("outputs")
        if outputs is not None and name in outputs:
            return outputs[name]
        raise AttributeError(f"{type(self).__name__} has no attribute or output {name!r}"
                             + (f" (outputs: {', '.join(outputs)})" if outputs else ""))

    def __repr__(self):
        shapes = ", ".join(f"{k}: {getattr(v, 'shape', '?')}" for k, v in self.outputs.items())
        return (f"SimResult(main={self.main!r}, outputs={{{shapes}}}, counters={self.counters}, "
                f"seed={self.seed}, cycles={self.cycles})")
