"""KVCache keys: the declared KV layout and tensor-parallel rank are part of every block key.
No server: the hash chain and the layout checks are pure functions."""

from __future__ import annotations

import numpy as np
import pytest

from ray_valkey_spill.caches import CacheValueError
from ray_valkey_spill.caches.kv import KVLayout, block_hashes, extra_keys_bytes
from ray_valkey_spill.errors import ConfigError

TOKENS = list(range(64))


def _hashes(**layout) -> list[bytes]:
    extra = extra_keys_bytes("llm", None, None, 16, (), KVLayout(**layout))
    return block_hashes(TOKENS, 16, extra)


def test_layout_dtype_and_rank_change_every_key():
    base = _hashes(block_shape=(4, 2, 16, 2, 32), dtype="bfloat16")
    others = [_hashes(block_shape=(4, 2, 16, 2, 32), dtype="float16"),
              _hashes(block_shape=(4, 2, 16, 4, 32), dtype="bfloat16"),
              _hashes(block_shape=(4, 2, 16, 2, 32), dtype="bfloat16", tp_rank=1, tp_size=2),
              _hashes(block_shape=(4, 2, 16, 2, 32), dtype="bfloat16", tp_rank=0, tp_size=2),
              _hashes()]
    for other in others:
        assert not set(other) & set(base)
    assert _hashes(block_shape=(4, 2, 16, 2, 32), dtype="float16") == \
        _hashes(block_shape=[4, 2, 16, 2, 32], dtype="<f2")  # one canonical spelling


@pytest.mark.parametrize("kwargs, field", [
    ({"block_shape": (4, 0)}, "block_shape"), ({"block_shape": "4x2"}, "block_shape"),
    ({"block_shape": (2.0,)}, "block_shape"), ({"dtype": "float13"}, "dtype"),
    ({"dtype": "object"}, "dtype"), ({"tp_rank": 2, "tp_size": 2}, "tp_rank"),
    ({"tp_size": 0}, "tp_size"), ({"tp_rank": -1}, "tp_rank"),
])
def test_bad_layouts_are_config_errors(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        KVLayout(**kwargs)


def test_a_block_of_another_layout_is_refused_with_a_clear_error():
    layout = KVLayout(block_shape=(2, 16, 8), dtype="float16", tp_rank=1, tp_size=2)
    layout.check_block(0, np.zeros((2, 16, 8), np.float16))
    for bad in (np.zeros((2, 16, 8), np.float32), np.zeros((2, 8, 8), np.float16)):
        with pytest.raises(CacheValueError, match=r"shape \(2, 16, 8\) dtype <f2.*rank 1 of 2"):
            layout.check_block(3, bad)
    KVLayout().check_block(0, np.zeros(3, np.int8))  # undeclared: any block


def test_an_unknown_dtype_tag_is_corrupt_even_without_ml_dtypes():
    from ray_valkey_spill.caches import ArrayCodec, CorruptValueError

    with pytest.raises(CorruptValueError):
        ArrayCodec().decode(b"\xa7\x00\x07\x00float13")
