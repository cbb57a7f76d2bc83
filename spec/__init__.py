"""The one definition of everything both sides of the chip must agree on.

``hdl/`` (the hardware), ``golden/`` (the bit-exact models), ``sim/`` (drivers and testbenches)
and the compiler all import these modules; this package imports none of them. Codes are
``amaranth.lib.enum`` enumerations with a fixed bit width, so a hardware signal can be declared
with the enumeration as its shape and Python code compares them with plain integers.

- :mod:`spec.codes` — opcodes, status and error codes, data-type and format fields of every block;
- :mod:`spec.softmax` — the softmax unit's fixed-point widths and its exp table.
"""
