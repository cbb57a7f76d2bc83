"""The compiler: decoder layers and batches of requests → chip programs and memory images.

- :mod:`compiler.asm` — the program builder (waits derived from what instructions touch, a
  readable dump with the expected cycle of each instruction);
- :mod:`compiler.timing` — the first-order timing model behind those expected cycles.
"""
