"""The LlamaIndex wrapper against the embedded server and the installed llama-index-core: a batch
of N texts is one MGET, one call of the wrapped model with the misses, one pipeline of SETs
(counted with INFO commandstats on a private server), sync and async, documents and queries."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from typing import List

import numpy as np
import pytest

pytest.importorskip("llama_index.core")

from llama_index.core.base.embeddings.base import BaseEmbedding  # noqa: E402

from support import commandstats, command_delta, keys_per_primary
from ray_valkey_spill import CacheValueError, EmbeddedValkey  # noqa: E402
from ray_valkey_spill.integrations.llamaindex import ValkeyCachedEmbedding  # noqa: E402

DIM = 32


def _vector(text: str, dim: int = DIM) -> List[float]:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    return np.random.default_rng(seed).standard_normal(dim).astype(np.float32).tolist()


class CountingEmbedding(BaseEmbedding):
    """A deterministic stand-in model recording every call it receives."""

    calls: list = []
    width: int = DIM

    def _get_query_embedding(self, query: str) -> List[float]:
        self.calls.append(("query", query))
        return [-x for x in _vector(query, self.width)]

    async def _aget_query_embedding(self, query: str) -> List[float]:
        return self._get_query_embedding(query)

    def _get_text_embedding(self, text: str) -> List[float]:
        return self._get_text_embeddings([text])[0]

    def _get_text_embeddings(self, texts: List[str]) -> List[List[float]]:
        self.calls.append(("texts", list(texts)))
        return [_vector(t, self.width) for t in texts]

    async def _aget_text_embeddings(self, texts: List[str]) -> List[List[float]]:
        self.calls.append(("atexts", list(texts)))
        return [_vector(t, self.width) for t in texts]


@pytest.fixture(scope="module")
def private_server():
    with EmbeddedValkey() as server:
        yield server


def _model(url, **options):
    # The wrapper hands all misses to the model's batch method at once; the model then splits
    # them by its own embed_batch_size (its API's limit): set high here, one call is one batch.
    inner = CountingEmbedding(model_name=f"counting-{uuid.uuid4().hex[:8]}", embed_batch_size=2048)
    inner.calls = []
    return inner, ValkeyCachedEmbedding(inner, url, dimension=DIM, ttl_seconds=60,
                                        stats_flush_seconds=None, **options)


def test_a_batch_is_one_mget_one_embed_call_one_pipeline(private_server):
    client = private_server.client()
    inner, model = _model(private_server.url)
    texts = [f"chunk {i}" for i in range(200)]
    model.get_text_embedding_batch(texts[:80])  # 80 cached
    inner.calls.clear()
    before = commandstats(client)
    got = model.get_text_embedding_batch(texts + texts[150:])  # duplicates asked twice
    assert command_delta(before, commandstats(client)) == {"mget": 1, "set": 120}
    assert inner.calls == [("texts", texts[80:])]  # one call, only the distinct misses
    assert got == [_vector(t) for t in texts + texts[150:]]  # float32-exact stand-in values
    before = commandstats(client)
    assert model.get_text_embedding_batch(texts) == got[:200]
    assert command_delta(before, commandstats(client)) == {"mget": 1} and len(inner.calls) == 1
    assert all(0 < client.ttl(k) <= 60 for k in model.document_cache.keys(texts[:3]))
    model.document_cache.clear()


def test_async_batch_is_one_mget_one_embed_call_one_pipeline(private_server, monkeypatch):
    client = private_server.client()
    inner, model = _model(private_server.url)
    texts = [f"async chunk {i}" for i in range(50)]

    def forbidden(*args, **kwargs):
        raise AssertionError("a synchronous cache method was used on the async path")

    for name in ("get_many", "put_many", "get_or_compute"):
        monkeypatch.setattr(model.document_cache, name, forbidden)

    async def run():
        await model.aget_text_embedding_batch(texts[:10])
        inner.calls.clear()
        before = commandstats(client)
        got = await model.aget_text_embedding_batch(texts)
        return got, command_delta(before, commandstats(client))

    got, delta = asyncio.run(run())
    assert delta == {"mget": 1, "set": 40}
    assert inner.calls == [("atexts", texts[10:])]
    assert got == [_vector(t) for t in texts]
    model.document_cache.clear()


def test_async_batch_on_a_cluster_embeds_the_misses_once(valkey_cluster):
    inner, model = _model(valkey_cluster.url, prefix=f"emb:li{uuid.uuid4().hex[:8]}:")
    texts = [f"cluster chunk {i}" for i in range(60)]

    async def run():
        await model.aget_text_embedding_batch(texts[:20])
        inner.calls.clear()
        return await model.aget_text_embedding_batch(texts), await model.aget_query_embedding("q")

    got, query = asyncio.run(run())
    assert inner.calls == [("atexts", texts[20:]), ("query", "q")]
    assert got == [_vector(t) for t in texts] and query == [-x for x in _vector("q")]
    held = keys_per_primary(valkey_cluster, model.document_cache.prefix)
    spread = {i: len(keys) for i, keys in held.items()}
    assert len(spread) == 3 and min(spread.values()) > 0, spread
    model.document_cache.clear()
    model.query_cache.clear()


def test_queries_are_cached_apart_from_documents(valkey_url):
    inner, model = _model(valkey_url)
    doc = model.get_text_embedding("same words")
    q1 = model.get_query_embedding("same words")
    q2 = asyncio.run(model.aget_query_embedding("same words"))
    assert q1 == q2 == [-x for x in doc]
    assert inner.calls == [("texts", ["same words"]), ("query", "same words")]
    model.document_cache.clear()
    model.query_cache.clear()


def test_a_model_of_the_wrong_width_is_refused_not_cached(valkey_url):
    inner, model = _model(valkey_url)
    inner.width = DIM + 1
    with pytest.raises(CacheValueError, match="declares dimension 32"):
        model.get_text_embedding_batch(["a", "b"])
    inner.width = DIM
    assert model.document_cache.get_many(["a", "b"]) == [None, None]
