"""The chip's register map (docs/csr.md is generated from it: ``python -m hdl.csr --doc``).

Each entry is ``(name, offset, width, access, description)``:

- ``offset``: byte offset in the AXI4-Lite window, a multiple of 4;
- ``width``: bits, 1..64; a register wider than 32 bits takes two words, the low half at
  ``offset`` and the high half at ``offset + 4``;
- ``access``: one of :data:`ACCESS` (the kinds and what they do).

An address no register takes answers SLVERR (reads return 0), and so does a write to a ``ro``
register. The hardware side is :class:`hdl.csr.CsrBank`.

:data:`REGISTERS` are the chip's control and status registers; the counters follow from
:data:`COUNTER_BASE`, one 8-byte slot each, named after the chip's events
(:func:`chip_registers`, ``hdl.chip.Chip.counter_names``). Offsets and names once documented keep
their meaning.
"""

__all__ = ["ACCESS", "RESPONSES", "REGISTERS", "ADDR_WIDTH", "COUNTER_BASE", "counter_register", "chip_registers",
           "offset_of"]

#: Access kinds and what they do.
ACCESS = {
    "ro": "read-only, driven by the hardware. One wider than 32 bits is read low half first: "
          "reading the low half takes a snapshot of the high half, which a read of the high half "
          "returns, so a counter read low then high is consistent.",
    "rw": "read-write, held in the register bank; writes honour the byte strobes.",
    "w1p": "write-one-to-pulse: every bit written 1 is 1 for one cycle (START, CLEAR); reads 0.",
    "w1c": "write-one-to-clear: the hardware sets bits (interrupt status), software clears them by "
           "writing 1s; a bit set and cleared in the same cycle stays set.",
}

#: What every address answers.
RESPONSES = ("OKAY; SLVERR for an address no register takes (a read returns 0) and for a write "
             "to a ro register.")

#: Bits of the AXI4-Lite address (a 4 KiB window).
ADDR_WIDTH = 12

#: Byte offset of the first counter; counter i is at COUNTER_BASE + 8·i.
COUNTER_BASE = 0x100

#: ``(name, offset, width, access, description[, reset])`` of the control and status registers.
REGISTERS = (
    ("ID", 0x000, 32, "ro", "chip identifier: 0x54464101 ('TFA', register map version 1)"),
    ("START", 0x010, 1, "w1p", "write 1: start the program (PROG_ADDR, PROG_LEN) when STATUS is IDLE or DONE"),
    ("STATUS", 0x014, 2, "ro", "state of the command processor: 0 IDLE, 1 RUNNING, 2 DONE, 3 ERROR"),
    ("CLEAR", 0x018, 1, "w1p", "write 1: DONE or ERROR → IDLE, the error registers to 0"),
    ("PROG_ADDR", 0x020, 64, "rw", "byte address of the program's first instruction (a multiple of 64)"),
    ("PROG_LEN", 0x028, 32, "rw", "instructions in the program at most (ERROR NO_END if no END among them)"),
    ("EXT_SIZE", 0x030, 64, "rw", "external addresses an instruction may touch are below this (0: all)"),
    ("WATCHDOG", 0x038, 32, "rw", "cycles without progress that stop a program with TIMEOUT (0: never)", 1 << 20),
    ("ERROR_CODE", 0x040, 8, "ro", "spec.codes.ChipError of the last program (0: none)"),
    ("ERROR_DETAIL", 0x044, 8, "ro", "the failing check or the block's own status code (docs/isa.md)"),
    ("ERROR_INDEX", 0x048, 32, "ro", "index in the program of the instruction that failed"),
    ("IRQ_ENABLE", 0x050, 2, "rw", "bit 0 done, bit 1 error", 3),
    ("IRQ_STATUS", 0x054, 2, "w1c", "bit 0 done, bit 1 error; the interrupt is (IRQ_STATUS & IRQ_ENABLE) != 0"),
    ("COUNTERS_CLEAR", 0x060, 1, "w1p", "write 1: every counter becomes 0"),
)


def counter_register(i, name):
    """The register of counter ``i`` called ``name``: ``CNT_<NAME>``, 48 bits, read-only."""
    return (f"CNT_{name.upper()}", COUNTER_BASE + 8 * i, 48, "ro", f"counter {name}")


def chip_registers(counters):
    """The chip's whole map: :data:`REGISTERS` and one :func:`counter_register` per name of
    ``counters`` (hdl.chip.Chip.counter_names), in that order."""
    return REGISTERS + tuple(counter_register(i, name) for i, name in enumerate(counters))


def offset_of(name, registers=REGISTERS):
    """The byte offset of register ``name``."""
    for entry in registers:
        if entry[0] == name:
            return entry[1]
    raise KeyError(f"no register {name!r}")
