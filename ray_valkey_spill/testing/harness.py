"""Drive the spill engine without Ray: buffers in, URLs out, buffers back.

``SpillHarness`` owns a real ``SpillEngine`` against a real server and plays Ray's part: it
hands the engine objects as plain buffers and restores them into preallocated buffers through
the same ``readinto`` loop Ray's ``_put_object_to_store`` runs. Tests, the backend benchmark
and the shard benchmark use it; nothing here imports Ray.
"""

from __future__ import annotations

import uuid
from typing import Any

from ..config import SpillConfig
from ..spill import keys as K
from ..spill.engine import ObjectReader, SpillEngine, SpillObject

# About the size of a real serialized owner address.
OWNER_ADDRESS = b"\x00" * 60


def new_object_id() -> str:
    """A random id shaped like Ray's ObjectRef.hex() (28 bytes)."""
    return uuid.uuid4().hex + uuid.uuid4().hex[:24]


def read_all(reader: ObjectReader, target: memoryview) -> int:
    """Ray's restore loop: ``readinto`` the rest of the object until ``reader.size`` bytes
    are in ``target``; a 0 return would loop forever in Ray, so it fails here."""
    done = 0
    while done < reader.size:
        n = reader.readinto(target[done:reader.size])
        if not n:
            raise RuntimeError("readinto returned 0 before the end of the object")
        done += n
    return done


class SpillHarness:
    """A ``SpillEngine`` on ``url`` under ``prefix`` in a session and node of its own."""

    def __init__(self, url: str, prefix: str, *, session: str | None = None,
                 node_id: str = "harnessnode", **options: Any):
        """``options``: spilling options (``chunk_size_bytes``, ``connections``, ...)."""
        self.session = session or f"harness_{uuid.uuid4().hex[:8]}"
        self.node_id = node_id
        config = SpillConfig.from_params({"url": url, "prefix": prefix, **options})
        self.engine = SpillEngine(config, self.session, node_id)

    @property
    def config(self) -> SpillConfig:
        """The engine's spilling config."""
        return self.engine.config

    @property
    def client(self):
        """The engine's pooled valkey-py client."""
        return self.engine.client

    def connect(self) -> None:
        """Connect and check the server now (keeps it out of a timed section)."""
        self.engine._pool()

    def spill_many(self, buffers: list, *, metadata: bytes = b"",
                   owner_address: bytes = OWNER_ADDRESS) -> list[bytes]:
        """Spill buffers (None: a metadata-only object) in one call; the URLs stored."""
        objects = [SpillObject(new_object_id(), None if b is None else memoryview(b).cast("B"),
                               metadata, owner_address) for b in buffers]
        return self.engine.spill(objects)

    def spill(self, buf, **kwargs: Any) -> bytes:
        """Spill one buffer; its URL (raises if it was not stored)."""
        (url,) = self.spill_many([buf], **kwargs)
        return url

    def restore_into(self, url: bytes, target) -> ObjectReader:
        """Restore the object behind ``url`` into ``target`` (at least its size); the reader
        (for its metadata and owner address)."""
        view = memoryview(target).cast("B")
        readers: list[ObjectReader] = []

        def deliver(_: int, reader: ObjectReader) -> None:
            if len(view) < reader.size:
                raise ValueError(f"target holds {len(view)} bytes, the object {reader.size}")
            read_all(reader, view)
            readers.append(reader)

        self.engine.restore([url], deliver)
        return readers[0]

    def restore(self, url: bytes) -> bytearray:
        """The object behind ``url`` as a new buffer."""
        size = K.parse_spill_url(url, self.config.prefix).size  # an upper bound of the data
        target = bytearray(size)
        reader = self.restore_into(url, target)
        del target[reader.size:]
        return target

    def delete(self, urls: list[bytes]) -> None:
        """Remove the objects behind ``urls``, as Ray's delete does; raises if the server
        fails."""
        self.engine.delete(urls)

    def stored_bytes(self, url: bytes) -> int:
        """Bytes the object's chunks take on the server (after compression)."""
        spill_url = K.parse_spill_url(url, self.config.prefix)
        pipe = self.client.pipeline(transaction=False)
        for key in K.object_keys(spill_url.base_key, spill_url.n_chunks)[1:]:
            pipe.strlen(key)
        return sum(pipe.execute())

    def destroy(self) -> None:
        """Remove every key of this harness's node and session."""
        self.engine.destroy()

    def close(self) -> None:
        """Stop the engine's I/O threads."""
        self.engine.close()

    def __enter__(self) -> "SpillHarness":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
