import pytest

from hdl.config import PRESETS, ArrayConfig, ChipConfig, get_config


def test_presets_are_valid_named_after_their_keys_and_survive_a_dict_round_trip():
    for name, cfg in PRESETS.items():
        assert cfg.name == name
        assert ChipConfig.from_dict(cfg.to_dict()) == cfg


def test_unknown_preset_is_rejected_with_the_known_names():
    with pytest.raises(ValueError, match="unknown CONFIG 'huge'.*tiny.*default.*large"):
        get_config("huge")


@pytest.mark.parametrize("change, message", [
    (dict(array={"rows": 1}), r"array\.rows must be in 2\.\.64"),
    (dict(softmax={"lanes": 3}), r"softmax\.lanes must be a power of two"),
    (dict(kvcache={"beat_elems": 7}), r"kvcache\.beat_elems .* must divide kvcache\.head_dim"),
    (dict(kvcache={"dtype": "fp8"}), r"kvcache\.dtype must be one of"),
    (dict(array={"cols": "8"}), r"array\.cols must be an int"),
    (dict(array={"dsp": "asic"}), r"array\.dsp must be one of"),
    (dict(vector={"lanes": 6}), r"vector\.lanes must be a power of two"),
    (dict(memory={"axi_data_bits": 100}), r"memory\.axi_data_bits must be one of"),
    (dict(array=ArrayConfig(rows=4, cols=4), softmax=3), r"softmax must be a SoftmaxConfig or a dict"),
])
def test_illegal_parameters_raise_naming_the_part_and_parameter(change, message):
    with pytest.raises((ValueError, TypeError), match=message):
        get_config("default").replace(**change)


def test_replace_rejects_unknown_parts_and_parameters():
    with pytest.raises(TypeError, match="unknown configuration part"):
        get_config("tiny").replace(rows=4)
    with pytest.raises(TypeError, match=r"unknown configuration parameter\(s\): array\.depth"):
        get_config("tiny").replace(array={"depth": 4})


def test_replace_changes_only_the_named_fields_of_a_part():
    cfg = get_config("tiny").replace(name="t2", array={"cols": 4})
    assert (cfg.name, cfg.array.rows, cfg.array.cols) == ("t2", 2, 4)
    assert cfg.kvcache == get_config("tiny").kvcache



def test_fpga_preset_elaborates_a_chip_with_a_smollm2_kv_cache_and_its_counters_in_the_register_map():
    from amaranth.hdl import Fragment

    from hdl.chip import Chip
    from spec import csr as spec_csr

    cfg = get_config("fpga")
    # SmolLM2-135M: 3 KV heads of 64, rows up to d_ff = 1536 (and d_model + 2·kv_dim = 960)
    assert (cfg.kvcache.heads, cfg.kvcache.head_dim) == (3, 64)
    assert cfg.vector.max_len >= 1536
    assert cfg.softmax.max_len >= cfg.kvcache.max_tokens
    chip = Chip.from_config("fpga")
    Fragment.get(chip, None)
    regs = chip.register_map
    assert regs["ID"].offset == 0 and regs["CNT_CYCLES"].offset == spec_csr.COUNTER_BASE
    assert [r.name for r in regs][-len(chip.counter_names):] == [f"CNT_{n.upper()}" for n in chip.counter_names]
    assert chip.csr_read_latency == 2
