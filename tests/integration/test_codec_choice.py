"""Chunks of one object reuse its codec verdict, yet every region still gets the right codec
(the real backend without Ray, against the embedded server)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import MiB
from ray_valkey_spill.spill import keys as K
from ray_valkey_spill.testing.harness import SpillHarness
from ray_valkey_spill.spill.codec import CODEC_RAW, CODEC_ZSTD, ChunkCodec, Manifest
from ray_valkey_spill.spill.engine import REPROBE_EVERY


@pytest.fixture
def harness(valkey_url, spill_prefix):
    h = SpillHarness(valkey_url, spill_prefix, chunk_size_bytes=MiB, connections=2)
    yield h
    h.close()


def _codecs(h, url) -> list[int]:
    spill_url = K.parse_spill_url(url, h.config.prefix)
    raw = h.client.get(K.manifest_key(spill_url.base_key))
    return [c.codec for c in Manifest.decode(raw, "manifest").chunks]


def _round_trip(h, data: np.ndarray) -> list[int]:
    url = h.spill(data)
    back = np.empty_like(data)
    h.restore_into(url, back)
    assert back.tobytes() == data.tobytes()
    codecs = _codecs(h, url)
    h.delete([url])
    return codecs


def test_probes_are_shared_within_an_object(harness, monkeypatch):
    probes = []
    choose = ChunkCodec.choose
    monkeypatch.setattr(ChunkCodec, "choose", lambda self, d: probes.append(1) or choose(self, d))
    n = 2 * REPROBE_EVERY
    data = np.random.default_rng(1).integers(0, 256, n * MiB, dtype=np.uint8)
    assert _round_trip(harness, data) == [CODEC_RAW] * n
    # one probe per REPROBE_EVERY chunks, plus a few where threads raced past the first one
    assert len(probes) <= n // 2, len(probes)


def test_a_region_that_changes_kind_is_probed_again(harness):
    rng = np.random.default_rng(2)
    noise = rng.integers(0, 256, REPROBE_EVERY * MiB, dtype=np.uint8)
    zeros = np.zeros(REPROBE_EVERY * MiB, dtype=np.uint8)
    # noise then zeros: the zeros are compressed from their first re-probe on
    codecs = _round_trip(harness, np.concatenate([noise, zeros]))
    assert codecs[:REPROBE_EVERY] == [CODEC_RAW] * REPROBE_EVERY
    assert codecs[REPROBE_EVERY:] == [CODEC_ZSTD] * REPROBE_EVERY
    # zeros then noise: a chunk the reused verdict does not shrink is stored raw, the next
    # one is probed again; every byte comes back either way
    codecs = _round_trip(harness, np.concatenate([zeros[:MiB], noise]))
    assert codecs[0] == CODEC_ZSTD and codecs[1:] == [CODEC_RAW] * REPROBE_EVERY
