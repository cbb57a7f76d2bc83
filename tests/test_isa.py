"""spec.isa: every opcode's fields fit 512 bits, encode/decode round-trip, bad fields are refused
naming the field, and the assembler derives waits from what instructions touch (docs/isa.md's
tables: tests/test_isa_doc.py)."""

import random

import pytest

from compiler.asm import Asm, ext, kv, spad
from spec import isa


def test_encode_decode_round_trips_random_fields_of_every_opcode():
    rng = random.Random(1)
    print("seed 1")
    for opcode in isa.Opcode:
        for _ in range(50):
            fields = {name: rng.randrange(1 << width) for name, width, _ in isa.OPERANDS[opcode]}
            wait = {u: rng.randrange(1 << 16) for u in isa.Unit if rng.random() < 0.5}
            got_op, got = isa.decode(isa.encode(opcode, wait=wait, **fields))
            assert got_op == opcode
            assert {k: got[k] for k in fields} == fields
            assert got["wait_mask"] == sum(1 << u for u in wait)
            for u, n in wait.items():
                assert got[f"wait_{u.name.lower()}"] == n


def test_encode_refuses_unknown_fields_and_values_that_do_not_fit_naming_them():
    with pytest.raises(ValueError, match="MATMUL has no operand 'rows'"):
        isa.encode(isa.Opcode.MATMUL, rows=1)
    with pytest.raises(ValueError, match=r"LOAD\.elem_bytes = 4 does not fit its 2 bits"):
        isa.encode(isa.Opcode.LOAD, elem_bytes=4)
    with pytest.raises(ValueError, match="unknown opcode 0x7f"):
        isa.decode(0x7F)


def test_assembler_waits_follow_read_after_write_write_after_read_and_kv_sequences():
    a = Asm()
    ld = a.emit(isa.Opcode.LOAD, writes=[spad(0, 10)], reads=[ext(0x1000, 64)], rows=1, elems=8)
    mm = a.emit(isa.Opcode.MATMUL, reads=[spad(5, 3)], writes=[spad(100, 4)], m=1, k=8, n=8)
    vec = a.emit(isa.Opcode.VECTOR, reads=[spad(200, 4)], writes=[spad(300, 4)], rows=1, length=8)
    ld2 = a.emit(isa.Opcode.LOAD, writes=[spad(100, 1)], rows=1, elems=8)     # overwrites mm's output
    app = a.emit(isa.Opcode.KV, reads=[spad(300, 4)], writes=[kv(3)], op=1, seq=3, rows=1)
    qk = a.emit(isa.Opcode.MATMUL, reads=[spad(0, 1), kv(3)], writes=[spad(400, 1)], m=1, k=8, n=1, w_src=2)
    a.end()
    assert mm.deps == {isa.Unit.LOAD: ld.index} and mm.wait == {isa.Unit.LOAD: 1}
    assert vec.deps == {}
    assert ld2.deps == {isa.Unit.MATMUL: mm.index}          # write after write
    assert app.deps == {isa.Unit.VECTOR: vec.index}
    assert qk.deps == {isa.Unit.KV: app.index, isa.Unit.LOAD: ld.index}
    words = a.encode()
    assert len(words) == 7 and isa.decode(words[-1])[0] == isa.Opcode.END
    assert "waits on" in a.dump()

