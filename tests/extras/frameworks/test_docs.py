"""Every Python example of docs/integrations.md runs as written against a real server (its
placeholder URL replaced by a private embedded server's)."""

from __future__ import annotations

import pathlib
import re

import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("llama_index.core")

from ray_valkey_spill import EmbeddedValkey  # noqa: E402

DOC = pathlib.Path(__file__).resolve().parents[3] / "docs" / "integrations.md"
PLACEHOLDER_URL = "valkey://localhost:6379/0"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)


@pytest.fixture(scope="module")
def server():
    with EmbeddedValkey() as s:
        yield s


def test_the_page_has_its_examples():
    assert len(BLOCKS) == 4 and all(PLACEHOLDER_URL in b for b in BLOCKS)
    assert "(lmcache.md)" in DOC.read_text(encoding="utf-8")


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_example_runs(server, index):
    from llama_index.core import Settings

    code = BLOCKS[index].replace(PLACEHOLDER_URL, server.url)
    previous = Settings._embed_model
    try:
        exec(compile(code, f"{DOC.name} example {index + 1}", "exec"), {"__name__": "__doc__"})
    finally:
        Settings._embed_model = previous
    keys = server.client().keys("*")
    assert keys and all(server.client().ttl(k) > 0 for k in keys)  # it stored, with TTLs
