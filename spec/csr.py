"""The chip's register map (docs/csr.md is generated from it: ``python -m hdl.csr --doc``).

Each entry is ``(name, offset, width, access, description)``:

- ``offset``: byte offset in the AXI4-Lite window, a multiple of 4;
- ``width``: bits, 1..64; a register wider than 32 bits takes two words, the low half at
  ``offset`` and the high half at ``offset + 4``;
- ``access``: one of :data:`ACCESS` (the kinds and what they do).

An address no register takes answers SLVERR (reads return 0), and so does a write to a ``ro``
register. The hardware side is :class:`hdl.csr.CsrBank`.

The map below is a placeholder for the chip top (hdl/chip.py) to complete: the command
processor's controls (hdl/cmdproc.py) and a first few counters; offsets and names once
documented keep their meaning.
"""

__all__ = ["ACCESS", "RESPONSES", "REGISTERS", "ADDR_WIDTH", "offset_of"]

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

#: ``(name, offset, width, access, description)`` of every register.
REGISTERS = (
    ("ID", 0x000, 32, "ro", "chip identifier and version"),
    ("START", 0x010, 1, "w1p", "write 1: start the program at PROG_ADDR (when IDLE or DONE)"),
    ("STATUS", 0x014, 2, "ro", "the command processor's state (hdl.cmdproc.ProcState: IDLE, RUNNING, DONE, ERROR)"),
    ("CLEAR", 0x018, 1, "w1p", "write 1: DONE or ERROR becomes IDLE, the error registers clear"),
    ("PROG_ADDR", 0x020, 64, "rw", "byte address of the program in external memory"),
    ("PROG_LEN", 0x028, 32, "rw", "instructions in the program"),
    ("EXT_SIZE", 0x030, 64, "rw", "bytes of external memory the program may touch (EXT_RANGE above)"),
    ("WATCHDOG", 0x038, 32, "rw", "cycles without progress before TIMEOUT (0: off)"),
    ("ERROR_CODE", 0x040, 8, "ro", "why the last program stopped (spec.codes.ChipError; 0: it did not)"),
    ("ERROR_DETAIL", 0x044, 8, "ro", "which check failed, or the unit's status"),
    ("ERROR_INDEX", 0x048, 32, "ro", "index of the instruction that failed"),
    ("IRQ_ENABLE", 0x050, 2, "rw", "bit 0 done, bit 1 error"),
    ("IRQ_STATUS", 0x054, 2, "w1c", "bit 0 done, bit 1 error; the interrupt is (IRQ_STATUS & IRQ_ENABLE) != 0"),
    ("COUNTERS_CLEAR", 0x060, 1, "w1p", "write 1: every counter becomes 0"),
    ("CYCLES", 0x100, 48, "ro", "clock cycles since the counters were cleared"),
    ("DMA_READ_BYTES", 0x108, 48, "ro", "bytes read from external memory"),
    ("DMA_WRITE_BYTES", 0x110, 48, "ro", "bytes written to external memory"),
)


def offset_of(name, registers=REGISTERS):
    """The byte offset of register ``name``."""
    for entry in registers:
        if entry[0] == name:
            return entry[1]
    raise KeyError(f"no register {name!r}")
