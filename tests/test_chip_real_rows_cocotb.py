# amaranth: UnusedElaboratable=no
"""The VECTOR and SOFTMAX units of the ``default`` chip (V = 8, P = 4 behind 8-lane words, 128-bit
AXI) on real SmolLM2-135M rows: the first call of every vector op golden.DecoderLayer makes on
layer 15 (5 tokens from position 0, so the ~2·10⁴ activation of channel 507 is in the rows) in
the bf16 and int8 modes, and the causal attention rows of two heads of a 40-token prefill in
both modes, as one program of LOAD → VECTOR / SOFTMAX → STORE, bit-exact with golden."""

import pytest
from chip_cases import ChipProgram, add_softmax, add_vector, attention_rows, layer_vector_cases

from golden.layer import DecoderLayer, calibrate
from golden.models import PROMPT
from sim.chip_api import ChipSim
from spec.codes import ChipError

pytestmark = pytest.mark.xdist_group("chip_default")

SIM = ChipSim("default")
LAYER = 15


@pytest.fixture(scope="module")
def real_program(smollm2):
    cfg = SIM.config
    kw = dict(lanes=cfg.vector.lanes, max_len=cfg.vector.max_len)
    w = smollm2.layer_weights(LAYER)
    hs = smollm2.hidden_states(smollm2.tokenize(PROMPT)[:40], LAYER)     # float64, causal: rows are prefixes
    assert abs(hs[0, 507]) > 1e4            # the first token's massive activation is in the rows
    cal = calibrate(w, hs[:24])
    pb = ChipProgram(cfg)
    names = {"vector": [], "softmax": []}
    for mode in ("bf16", "int8"):
        layer = DecoderLayer(w, mode=mode, calibration=cal if mode == "int8" else None)
        cases, table = layer_vector_cases(layer, hs[:5], **kw)
        for op, case in cases.items():
            names["vector"].append(f"{op}_{mode}")
            add_vector(pb, names["vector"][-1], case, rope_table=table, table_rows=range(5))
        layer = DecoderLayer(w, mode=mode, calibration=cal if mode == "int8" else None, trace=True)
        layer.prefill(layer.to_input(hs))
        for head in (0, 5):
            names["softmax"].append(f"softmax_{mode}_head{head}")
            add_softmax(pb, names["softmax"][-1], attention_rows(layer, head))
    return pb, names


def test_every_vector_op_and_attention_softmax_on_real_smollm2_rows_is_bit_exact_in_the_default_chip(real_program):
    pb, names = real_program
    ops = {n.rsplit("_", 1)[0] for n in names["vector"]}
    assert ops == {"rmsnorm", "rope", "swiglu", "add", "quant_token", "dequant", "requant"}
    seed = 27
    print(f"seed {seed}")
    res = SIM.run(pb.memory, pb.program(), read_back=pb.read_back, stall=0.2, backpressure=0.2, seed=seed)
    assert SIM.error_of(res) == (ChipError.OK, 0, 0)
    assert pb.mismatches(res) == {}
    c = res.counters
    assert c["vector_exec_instrs"] == len(names["vector"]) and c["softmax_exec_instrs"] == len(names["softmax"])
    print(f"cycles {c['cycles']}, vector busy {c['vector_exec_busy']}, softmax busy {c['softmax_exec_busy']}")
