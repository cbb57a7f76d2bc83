"""golden.scratchpad: the reference walk of a descriptor (loop order, flags, empty walks,
saturation) and the memory model (lane masks, order of writes, addresses past the end)."""

import numpy as np
import pytest

from golden.scratchpad import Descriptor, ScratchpadModel, address_width, walk


def test_walk_is_innermost_loop_first_with_loop_end_flags():
    # matmul activations K-tile-major: i1 = K tile (stride 1), i0 = row m (row stride 10)
    addr, last0, last1, last = walk(Descriptor(base=100, count0=3, count1=2, stride0=10, stride1=1))
    assert addr.tolist() == [100, 110, 120, 101, 111, 121]
    assert last0.tolist() == [0, 0, 1, 0, 0, 1] and last1.tolist() == [0, 0, 0, 0, 0, 1]
    assert last.tolist() == last1.tolist()
    # RoPE parameters: i2 = row (stride 4), i1 = head (stride 0), i0 = word (stride 1)
    addr, _, last1, last = walk(dict(base=0, count0=2, count1=2, count2=2, stride0=1, stride1=0, stride2=4))
    assert addr.tolist() == [0, 1, 0, 1, 4, 5, 4, 5]
    assert last1.tolist() == [0, 0, 0, 1, 0, 0, 0, 1] and last.tolist() == [0] * 7 + [1]


def test_empty_walks_saturation_and_descriptor_checks():
    assert len(walk(Descriptor(base=5, count1=0))[0]) == 0 and Descriptor(base=5, count2=0).size == 0
    assert walk(Descriptor(base=60, count0=3, stride0=3), addr_width=6)[0].tolist() == [60, 63, 63]
    with pytest.raises(ValueError, match="Descriptor.stride1 must be an int ≥ 0"):
        Descriptor(base=0, stride1=-1)
    assert address_width(words=8192, banks=4) == 16 and address_width(words=8, banks=3) == 6


def test_model_writes_lanes_by_mask_in_order_and_ignores_addresses_past_the_end():
    m = ScratchpadModel(lanes=2, words=4, banks=3)
    assert (m.capacity, m.addr_width) == (12, 5)
    m.write([1, 1, 12, 31], [[1, 2], [3, 4], [5, 6], [7, 8]], [3, 1, 3, 3])
    assert m.read([1, 12, 0]).tolist() == [[3, 2], [0, 0], [0, 0]]
    m.write_walk(Descriptor(base=4, count0=2, stride0=4), np.array([[9, 9], [8, 8]]))
    assert m.read_walk(Descriptor(base=0, count0=3, stride0=4)).tolist() == [[0, 0], [9, 9], [8, 8]]
