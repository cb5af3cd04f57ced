"""The LangChain adapters against the embedded server and the installed LangChain: its standard
BaseStore suites, CacheBackedEmbeddings (documents and queries), and the chat history."""

from __future__ import annotations

import asyncio
import uuid

import numpy as np
import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("langchain_tests")

from langchain_classic.embeddings import CacheBackedEmbeddings  # noqa: E402
from langchain_core.embeddings import DeterministicFakeEmbedding  # noqa: E402
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage  # noqa: E402
from langchain_tests.integration_tests.base_store import (BaseStoreAsyncTests,  # noqa: E402
                                                          BaseStoreSyncTests)

from support import commandstats, keys_per_primary
from ray_valkey_spill import CacheValueError, EmbeddedValkey  # noqa: E402
from ray_valkey_spill.integrations.langchain import (ValkeyChatMessageHistory,  # noqa: E402
                                                     ValkeyEmbeddingStore)

DIM = 8
# float32-exact values, so a round trip through the declared dtype compares equal.
THREE = tuple([float(i + j / 4) for j in range(DIM)] for i in range(3))


def _f32(vectors) -> np.ndarray:
    return np.asarray(vectors, np.float32)


def _uid() -> str:
    return uuid.uuid4().hex[:10]


class TestStoreSync(BaseStoreSyncTests[list[float]]):
    @pytest.fixture
    def kv_store(self, valkey_url, key_prefixes):
        return ValkeyEmbeddingStore(valkey_url, "suite", dimension=DIM, ttl_seconds=60,
                                    prefix=key_prefixes["emb"])

    @pytest.fixture
    def three_values(self):
        return THREE


# LangChain's async suite is bare `async def` tests: run them on pytest-asyncio (its one sync
# test, test_no_overrides_DO_NOT_OVERRIDE, only warns about the mark).
@pytest.mark.asyncio
@pytest.mark.filterwarnings("ignore:The test <Function test_no_overrides")
class TestStoreAsync(BaseStoreAsyncTests[list[float]]):
    @pytest.fixture
    def kv_store(self, valkey_url, key_prefixes):  # the store opens its async pool lazily
        return ValkeyEmbeddingStore(valkey_url, "suite", dimension=DIM, ttl_seconds=60,
                                    prefix=key_prefixes["emb"])

    @pytest.fixture
    def three_values(self):
        return THREE


def test_store_keeps_binary_vectors_with_a_ttl(valkey_url, valkey_client, key_prefixes):
    store = ValkeyEmbeddingStore(valkey_url, "m", dimension=768, ttl_seconds=120,
                                 prefix=key_prefixes["emb"])
    store.mset([("some text", [0.25] * 768)])
    key = store.cache.key("some text")
    assert 0 < valkey_client.ttl(key) <= 120
    size = valkey_client.strlen(key)
    assert 768 * 4 < size < 768 * 4 + 64  # float32 bytes + header + the text, not JSON
    with pytest.raises(CacheValueError, match="dimension 768"):
        store.mset([("short", [0.5] * 767)])
    assert sorted(store.yield_keys()) == ["some text"]


class _CountingEmbeddings(DeterministicFakeEmbedding):
    calls: list = []

    def embed_documents(self, texts):
        self.calls.append(("documents", list(texts)))
        return super().embed_documents(texts)

    def embed_query(self, text):
        self.calls.append(("query", text))
        return super().embed_query(text)

    async def aembed_documents(self, texts):
        self.calls.append(("adocuments", list(texts)))
        return super().embed_documents(texts)


def _embedder(valkey_url, prefix):
    underlying = _CountingEmbeddings(size=DIM)
    underlying.calls = []
    docs = ValkeyEmbeddingStore(valkey_url, "fake", dimension=DIM, role="document",
                                ttl_seconds=60, prefix=prefix)
    queries = ValkeyEmbeddingStore(valkey_url, "fake", dimension=DIM, role="query",
                                   ttl_seconds=60, prefix=prefix)
    return underlying, CacheBackedEmbeddings(underlying, docs, query_embedding_store=queries)


def test_cache_backed_embeddings_documents_and_queries(valkey_url, key_prefixes):
    underlying, embedder = _embedder(valkey_url, key_prefixes["emb"])
    texts = [f"document {i}" for i in range(20)]
    first = embedder.embed_documents(texts[:10])
    second = embedder.embed_documents(texts)  # 10 cached, 10 new
    assert underlying.calls == [("documents", texts[:10]), ("documents", texts[10:])]
    # Stored as the declared float32: what comes back is the model's output rounded to it.
    expected = _f32(underlying.embed_documents(texts))
    assert np.array_equal(_f32(first), expected[:10]) and np.array_equal(_f32(second), expected)
    underlying.calls.clear()
    third = embedder.embed_documents(texts)
    assert np.array_equal(_f32(third), expected) and underlying.calls == []
    assert all(type(x) is float for x in third[0])  # plain list[float], as LangChain expects
    q1 = embedder.embed_query("document 0")  # a query is cached apart from the document
    q2 = embedder.embed_query("document 0")
    assert np.array_equal(_f32(q1), _f32(q2)) and underlying.calls == [("query", "document 0")]
    assert sorted(embedder.query_embedding_store.yield_keys()) == ["document 0"]


def test_cache_backed_embeddings_async(valkey_url, key_prefixes):
    underlying, embedder = _embedder(valkey_url, key_prefixes["emb"])
    texts = ["a", "b", "c"]

    async def run():
        first = await embedder.aembed_documents(texts)
        return first, await embedder.aembed_documents(texts)

    first, second = asyncio.run(run())
    assert np.array_equal(_f32(first), _f32(second)) and underlying.calls == [("adocuments", texts)]
    assert embedder.embed_documents(texts) == second  # the sync path reads what async wrote


def test_async_store_methods_do_not_use_the_thread_pool(valkey_url, key_prefixes, monkeypatch):
    import langchain_core.stores

    store = ValkeyEmbeddingStore(valkey_url, "m", dimension=DIM, ttl_seconds=60,
                                 prefix=key_prefixes["emb"])

    def forbidden(*args, **kwargs):
        raise AssertionError("thread-pool fallback used")

    monkeypatch.setattr(langchain_core.stores, "run_in_executor", forbidden)
    monkeypatch.setattr(store.cache, "get_many", forbidden)
    monkeypatch.setattr(store.cache, "put_many", forbidden)

    async def run():
        await store.amset([("x", THREE[0])])
        got = await store.amget(["x", "y"])
        keys = [k async for k in store.ayield_keys(prefix="x")]
        await store.amdelete(["x"])
        return got, keys, await store.amget(["x"])

    assert asyncio.run(run()) == ([THREE[0], None], ["x"], [None])


# --- chat history ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def private_server():
    with EmbeddedValkey() as server:
        yield server


def test_chat_history_one_append_per_add_messages(private_server):
    client = private_server.client()
    modules = {dict(zip(m[::2], m[1::2]))[b"name"] for m in client.execute_command("MODULE", "LIST")}
    assert modules <= {b"lua"}  # a plain Valkey: no search or JSON module
    history = ValkeyChatMessageHistory(f"chat-{_uid()}", private_server.url, ttl_seconds=100)
    assert history.messages == []  # warms the pool
    batch = [SystemMessage("be brief"), HumanMessage("hi"), AIMessage("hello")]
    before = commandstats(client)
    history.add_messages(batch)
    delta = {k: v - before.get(k, 0) for k, v in commandstats(client).items()
             if v != before.get(k, 0)}
    assert delta == {"multi": 1, "rpush": 1, "ltrim": 1, "expire": 2, "llen": 1, "exec": 1}
    history.add_user_message("again")
    assert [(type(m), m.content) for m in history.messages] == [
        (SystemMessage, "be brief"), (HumanMessage, "hi"), (AIMessage, "hello"),
        (HumanMessage, "again")]


def test_chat_history_ttl_refreshed_on_write_and_clear(valkey_url, valkey_client, key_prefixes):
    history = ValkeyChatMessageHistory("s1", valkey_url, ttl_seconds=100, max_messages=3,
                                       prefix=key_prefixes["session"])
    history.add_messages([HumanMessage("1")])
    turns_key = history.store._keys("s1")[0]
    valkey_client.expire(turns_key, 5)
    history.add_messages([AIMessage("2"), HumanMessage("3"), AIMessage("4")])
    assert valkey_client.ttl(turns_key) > 90
    assert [m.content for m in history.messages] == ["2", "3", "4"]  # the last max_messages
    history.clear()
    assert history.messages == []


def test_chat_history_async(valkey_url, key_prefixes, monkeypatch):
    import langchain_core.chat_history

    history = ValkeyChatMessageHistory("s2", valkey_url, ttl_seconds=60,
                                       prefix=key_prefixes["session"])

    def forbidden(*args, **kwargs):
        raise AssertionError("thread-pool fallback or sync method used")

    monkeypatch.setattr(langchain_core.chat_history, "run_in_executor", forbidden)
    for name in ("append", "last", "trim"):
        monkeypatch.setattr(history.store, name, forbidden)

    async def run():
        await history.aadd_messages([HumanMessage("q"), AIMessage("a")])
        got = await history.aget_messages()
        await history.aclear()
        return got, await history.aget_messages()

    got, after = asyncio.run(run())
    assert [m.content for m in got] == ["q", "a"] and after == []


def test_async_store_and_chat_history_on_a_cluster(valkey_cluster):
    prefix = f"emb:lc{_uid()}:"
    store = ValkeyEmbeddingStore(valkey_cluster.url, "m", dimension=DIM, ttl_seconds=60,
                                 prefix=prefix)
    history = ValkeyChatMessageHistory("s", valkey_cluster.url, ttl_seconds=60,
                                       prefix=f"session:lc{_uid()}:")
    pairs = [(f"k{i}", THREE[i % 3]) for i in range(60)]

    async def run():
        await store.amset(pairs)
        got = await store.amget([k for k, _ in pairs] + ["absent"])
        keys = sorted([k async for k in store.ayield_keys()])
        await store.amdelete([k for k, _ in pairs[:10]])
        await history.aadd_messages([HumanMessage("q"), AIMessage("a")])
        messages = await history.aget_messages()
        await history.aclear()
        return got, keys, messages, await store.amget(["k0", "k10"]), await history.aget_messages()

    got, keys, messages, after, cleared = asyncio.run(run())
    assert got == [v for _, v in pairs] + [None] and keys == sorted(k for k, _ in pairs)
    assert after == [None, THREE[1]] and cleared == []
    assert [m.content for m in messages] == ["q", "a"]
    spread = {i: len(k) for i, k in keys_per_primary(valkey_cluster, prefix).items()}
    assert len(spread) == 3 and min(spread.values()) > 0, spread
    store.cache.clear()
