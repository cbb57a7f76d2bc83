"""The program builder: instructions with their dependencies worked out from what they touch.

Each instruction declares the memory it reads and writes — scratchpad word ranges, external
byte ranges, KV-cache sequences — and :class:`Asm` derives its waits (docs/isa.md): for every
earlier instruction of another unit that it conflicts with (read after write, write after read,
write after write), a wait until that unit has retired it. Units run their own instructions in
order, so same-unit order needs no wait. The dump (:meth:`Asm.dump`) lists every instruction
with the instructions it waits for and the start and end cycle a simple model of the units
expects (:mod:`compiler.timing`).
"""

from dataclasses import dataclass, field

from spec import isa

__all__ = ["Span", "spad", "ext", "kv", "Instr", "Asm"]


@dataclass(frozen=True)
class Span:
    """A piece of state an instruction touches: ``space`` ("spad" words, "ext" bytes, "kv"
    sequence ids) and the half-open range ``[lo, hi)``."""
    space: str
    lo: int
    hi: int

    def overlaps(self, other):
        return self.space == other.space and self.lo < other.hi and other.lo < self.hi


def spad(addr, words):
    """Scratchpad words ``[addr, addr + words)``."""
    return Span("spad", int(addr), int(addr) + int(words))


def ext(addr, nbytes):
    """External memory bytes ``[addr, addr + nbytes)``."""
    return Span("ext", int(addr), int(addr) + int(nbytes))


def kv(seq):
    """The KV-cache rows of sequence ``seq`` (appended by KV, read by MATMUL with KV weights)."""
    return Span("kv", int(seq), int(seq) + 1)


@dataclass
class Instr:
    """One instruction of a program."""
    index: int                 #: position in the program
    opcode: isa.Opcode
    fields: dict
    reads: tuple = ()
    writes: tuple = ()
    comment: str = ""
    unit: isa.Unit = None      #: None for END
    seq: int = 0               #: position among its unit's instructions (0 first)
    deps: dict = field(default_factory=dict)   #: unit → index of the latest instruction waited for
    wait: dict = field(default_factory=dict)   #: unit → retired count (the encoded waits)
    cost: int = 0              #: expected cycles (compiler.timing)
    start: int = 0             #: expected start cycle
    end: int = 0               #: expected end cycle

    def encode(self):
        return isa.encode(self.opcode, wait=self.wait, **self.fields)


class Asm:
    """Builds one program.

    Parameters
    ----------
    timing : callable or None
        ``timing(instr) → cycles``, the expected duration of an instruction (e.g.
        :class:`compiler.timing.TimingModel`); ``None``: every instruction costs 1.
    """

    def __init__(self, timing=None):
        self._instrs = []
        self._counts = {u: 0 for u in isa.Unit}
        self._timing = timing
        self._ended = False

    @property
    def instructions(self):
        return list(self._instrs)

    def emit(self, opcode, *, reads=(), writes=(), comment="", **fields):
        """Append an instruction; returns its :class:`Instr`. ``fields`` are the operand fields
        of spec.isa (checked when encoded); ``reads``/``writes`` are :class:`Span`s."""
        if self._ended:
            raise ValueError("the program already has its END")
        opcode = isa.Opcode(opcode)
        unit = isa.UNIT_OF[opcode]
        ins = Instr(index=len(self._instrs), opcode=opcode, fields=dict(fields), reads=tuple(reads),
                    writes=tuple(writes), comment=comment, unit=unit, seq=self._counts[unit])
        isa.encode(opcode, **fields)      # raises now, naming the field, if one does not fit
        for prev in self._instrs:
            if prev.unit == unit or prev.unit is None:
                continue
            if self._conflict(prev, ins):
                if prev.index > ins.deps.get(prev.unit, -1):
                    ins.deps[prev.unit] = prev.index
        ins.wait = {u: self._instrs[i].seq + 1 for u, i in ins.deps.items()}
        self._counts[unit] += 1
        ins.cost = int(self._timing(ins)) if self._timing else 1
        unit_free = max((p.end for p in self._instrs if p.unit == unit), default=0)
        ins.start = max([unit_free] + [self._instrs[i].end for i in ins.deps.values()])
        ins.end = ins.start + ins.cost
        self._instrs.append(ins)
        return ins

    @staticmethod
    def _conflict(a, b):
        for w in a.writes:
            if any(w.overlaps(x) for x in b.reads + b.writes):
                return True
        for r in a.reads:
            if any(r.overlaps(x) for x in b.writes):
                return True
        return False

    def end(self):
        """Append END (the program is done when every unit has retired its instructions)."""
        ins = Instr(index=len(self._instrs), opcode=isa.Opcode.END, fields={})
        ins.start = ins.end = max((p.end for p in self._instrs), default=0)
        self._instrs.append(ins)
        self._ended = True
        return ins

    def encode(self):
        """The program as instruction ints (with its END)."""
        if not self._ended:
            raise ValueError("the program has no END: call end() first")
        return [i.encode() for i in self._instrs]

    @property
    def expected_cycles(self):
        return max((i.end for i in self._instrs), default=0)

    def dump(self):
        """A readable listing: index, unit, opcode, main fields, waits, expected cycles."""
        lines = [f"{'#':>4} {'unit':<7} {'op':<7} {'start':>9} {'end':>9}  waits on        what"]
        for i in self._instrs:
            unit = i.unit.name if i.unit is not None else "-"
            deps = ",".join(f"{u.name[:2]}#{idx}" for u, idx in sorted(i.deps.items())) or "-"
            lines.append(f"{i.index:>4} {unit:<7} {i.opcode.name:<7} {i.start:>9} {i.end:>9}  {deps:<15} {i.comment}")
        return "\n".join(lines)
