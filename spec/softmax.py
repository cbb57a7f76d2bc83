"""The softmax unit's fixed-point widths and exp table (docs/numerics.md, "Softmax").

:mod:`golden.softmax` computes with them and :mod:`hdl.softmax` builds its datapath from them.
"""

import numpy as np

__all__ = ["FRAC_BITS", "EXP_BITS", "SUM_GUARD", "RCP_BITS", "RCP_IN_BITS", "X_BITS", "N_MAX",
           "INT8_ONE", "BF16_NAN_ROW", "exp2_table", "EXP2_TABLE"]

#: Fractional bits of x (log2 units); the exp table has 2**FRAC_BITS entries.
FRAC_BITS = 10
#: EXP2_TABLE[f] = round(2**EXP_BITS * 2**(-f / 2**FRAC_BITS)), in [2**(EXP_BITS-1), 2**EXP_BITS].
EXP_BITS = 16
#: Extra fractional bits of each summed term below the table's LSB.
SUM_GUARD = 12
#: Bits of the reciprocal Rcp, in (2**(RCP_BITS-1), 2**RCP_BITS].
RCP_BITS = 16
#: Top bits of the sum that the reciprocal divides.
RCP_IN_BITS = 16
#: Width of x (signed), i.e. saturation at ±2**(X_BITS-1-FRAC_BITS) log2 units.
X_BITS = 24
#: Clamp of the integer part n of R - x (any n ≥ N_MAX gives exactly 0 on both paths).
N_MAX = 255
#: The uint8 code of p = 1 (the int8 path's output scale is 1/INT8_ONE).
INT8_ONE = 255
#: bf16 output of a visible position in a row with a NaN (canonical quiet NaN).
BF16_NAN_ROW = 0x7FC0


def exp2_table(frac_bits=FRAC_BITS, exp_bits=EXP_BITS):
    """The exp table: round-half-up of 2**exp_bits * 2**(-f / 2**frac_bits), f = 0..2**frac_bits-1."""
    f = np.arange(1 << frac_bits, dtype=np.float64)
    return np.floor(np.exp2(exp_bits - f / (1 << frac_bits)) + 0.5).astype(np.int64)


EXP2_TABLE = exp2_table()
