"""Bit-exact numpy models of every datapath block (the contract is docs/numerics.md)."""

from .fp import (  # noqa: F401
    BF16_QNAN,
    FP32_QNAN,
    as_bf16_bits,
    as_fp32_bits,
    bf16_daz,
    bf16_from_bits,
    bf16_mul,
    bf16_to_fp32_bits,
    fp32_add,
    fp32_daz,
    fp32_from_bits,
    fp32_to_bf16,
)
from .kvcache import KVCacheError, KVCommand, KVOp, KVResponse, KVStatus, PagedKVCache  # noqa: F401
from .layer import Calibration, DecoderLayer, LayerConfig, LayerWeights, calibrate  # noqa: F401
from .matmul import int8_matmul_max_k, matmul_bf16, matmul_int8  # noqa: F401
from .requant import quantize_multiplier, requantize  # noqa: F401
from .softmax import (  # noqa: F401
    softmax_bf16,
    softmax_bf16_bits,
    softmax_int8,
    softmax_reference,
    softmax_scale_bf16,
    softmax_scale_int8,
)
from .vector import (  # noqa: F401
    RMSNormInt8,
    RopeTable,
    hadamard_fp32,
    hadamard_reference,
    mul_bf16,
    mul_int8,
    residual_add_bf16,
    residual_add_int,
    residual_add_params,
    rmsnorm_bf16,
    rmsnorm_fp32_in,
    rmsnorm_int8,
    rmsnorm_reference,
    rope_bf16,
    rope_fp32_in,
    rope_int8,
    rope_reference,
    rope_table,
    silu_bf16,
    silu_int8,
    silu_reference,
    silu_table_int8,
    swiglu_bf16,
    swiglu_fp32_in,
    swiglu_int8,
)
