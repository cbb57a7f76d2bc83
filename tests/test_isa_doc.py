"""docs/isa.md holds the field tables spec.isa generates and the decode checks of hdl.cmdproc
for the opcodes it describes, so the page never drifts from the encoding."""

from pathlib import Path

from hdl.cmdproc import CHECKS
from spec import isa
from spec.codes import ChipError

DOC = Path(__file__).resolve().parent.parent / "docs" / "isa.md"
#: The error code of each kind of check (docs/isa.md, "Errors").
KIND = {"field": ChipError.BAD_FIELD, "limit": ChipError.BAD_FIELD, "spad": ChipError.SPAD_RANGE,
        "ext": ChipError.EXT_RANGE}


def test_isa_doc_holds_the_generated_field_tables():
    assert isa.markdown_tables() in DOC.read_text()


def test_isa_doc_lists_every_vector_and_softmax_decode_check_with_its_detail():
    text = DOC.read_text()
    for op in (isa.Opcode.VECTOR, isa.Opcode.SOFTMAX):
        for detail, (kind, what) in enumerate(CHECKS[op]):
            assert f"| {detail} | {KIND[kind].name} | {what} |" in text, (op.name, detail)
