import pytest

from hdl.config import PRESETS, AccelConfig, get_config


def test_presets_are_valid_and_named_after_their_keys():
    for name, cfg in PRESETS.items():
        assert cfg.name == name
        assert AccelConfig(**cfg.to_dict()) == cfg


def test_unknown_preset_is_rejected_with_the_known_names():
    with pytest.raises(ValueError, match="unknown CONFIG 'huge'.*tiny.*default.*large"):
        get_config("huge")


@pytest.mark.parametrize("change, message", [
    (dict(array_rows=1), "array_rows must be in 2..64"),
    (dict(softmax_lanes=3), "softmax_lanes must be a power of two"),
    (dict(kv_beat_elems=7), "kv_beat_elems .* must divide kv_head_dim"),
    (dict(kv_dtype="fp8"), "kv_dtype must be"),
    (dict(array_cols="8"), "array_cols must be an int"),
])
def test_illegal_parameters_raise_naming_the_parameter(change, message):
    with pytest.raises((ValueError, TypeError), match=message):
        get_config("default").replace(**change)


def test_replace_rejects_unknown_parameters():
    with pytest.raises(TypeError, match="unknown configuration parameter"):
        get_config("tiny").replace(rows=4)
