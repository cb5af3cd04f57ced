"""The data kinds of the lab's spill runs: objects of each kind made fast, and their digests.

``DataMaker`` makes objects of one kind (every object and every chunk differs); ``digest``
checks them byte for byte after a restore.
"""

from __future__ import annotations

import pickle
from typing import Any, Callable

import numpy as np
import xxhash

DATA_KINDS = ("float64", "fp16-kv", "int-tokens", "sparse", "mixed")
# Every object differs from its siblings: these positions get fresh values per object.
VARY_STRIDE_BYTES = 64 * 1024


def make_data(kind: str, nbytes: int, seed: int = 7) -> np.ndarray:
    """A flat byte view of ``nbytes`` of one data kind (one ``DataMaker`` base block)."""
    if kind == "mixed":
        raise ValueError("make_data makes one array; 'mixed' objects are not arrays")
    maker = DataMaker(kind, nbytes, seed, bases=1)
    return maker.bases[0].reshape(-1).view(np.uint8)


# -- data -----------------------------------------------------------------------------------
def digest(value: Any, ref_digest: Callable[[Any], int] | None = None) -> int:
    """xxh3-64 of a value: raw bytes for arrays and bytes, pickle bytes for Python objects;
    an ObjectRef inside a dict or list counts as the digest of the value it points to."""
    if isinstance(value, np.ndarray):
        h = xxhash.xxh3_64(f"{value.dtype.str}{value.shape}".encode())
        h.update(memoryview(np.ascontiguousarray(value)).cast("B"))
        return h.intdigest()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return xxhash.xxh3_64_intdigest(value)
    if isinstance(value, dict):
        h = xxhash.xxh3_64()
        for k in sorted(value, key=repr):
            h.update(repr(k).encode())
            h.update(digest(value[k], ref_digest).to_bytes(8, "little"))
        return h.intdigest()
    if isinstance(value, (list, tuple)) and any(_is_ref(v) or isinstance(v, (dict, np.ndarray))
                                                for v in value):
        h = xxhash.xxh3_64(type(value).__name__.encode())
        for v in value:
            h.update(digest(v, ref_digest).to_bytes(8, "little"))
        return h.intdigest()
    if _is_ref(value):
        if ref_digest is None:
            import ray

            return digest(ray.get(value))
        return ref_digest(value)
    return xxhash.xxh3_64_intdigest(pickle.dumps(value, protocol=5))


def _is_ref(value: Any) -> bool:
    import ray

    return isinstance(value, ray.ObjectRef)


def nbytes_of(value: Any) -> int:
    """Bytes of array and bytes data in ``value``, through dicts, lists and tuples (other values
    count 0)."""
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, (bytes, bytearray)):
        return len(value)
    if isinstance(value, dict):
        return sum(nbytes_of(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(nbytes_of(v) for v in value)
    return 0


class DataMaker:
    """Makes objects of one kind fast: a few random base blocks are generated once; each object
    is a base block whose values at every ``VARY_STRIDE_BYTES`` are replaced by fresh ones (so
    every object, and every chunk of it, differs). ``ray.put`` copies the block into plasma,
    so the block can be mutated again for the next object."""

    N_BASE = 3

    def __init__(self, kind: str, object_bytes: int, seed: int = 1234, bases: int | None = None):
        if kind not in DATA_KINDS:
            raise ValueError(f"unknown data kind {kind!r}")
        self.kind = kind
        self.object_bytes = object_bytes
        self.rng = np.random.default_rng(seed)
        count = bases or (self.N_BASE if kind != "mixed" else 2)
        self.bases = [self._base() for _ in range(count)]

    def _base(self) -> np.ndarray:
        rng, n = self.rng, self.object_bytes
        if self.kind in ("float64", "mixed"):
            a = np.empty(n // 8, dtype=np.float64)
            rng.random(out=a)
            return a
        if self.kind == "fp16-kv":
            # (layers, 2, heads, tokens, dim) of half-precision activations
            heads, dim = 8, 128
            tokens = max(1, n // (2 * 2 * heads * dim * 2) // 4)
            layers = max(1, n // (2 * 2 * heads * tokens * dim))
            a = np.empty((layers, 2, heads, tokens, dim), dtype=np.float16)
            flat = a.reshape(-1)
            step = 1 << 22
            tmp = np.empty(step, dtype=np.float32)
            for s in range(0, flat.size, step):
                m = min(step, flat.size - s)
                rng.standard_normal(out=tmp[:m], dtype=np.float32)
                flat[s:s + m] = tmp[:m]
            return a
        if self.kind == "int-tokens":
            return rng.integers(0, 50_000, size=n // 8, dtype=np.int64)
        if self.kind == "sparse":
            a = np.zeros(n // 8, dtype=np.float64)
            nz = max(1, a.size // 100)
            a[rng.choice(a.size, size=nz, replace=False)] = rng.standard_normal(nz)
            return a
        raise AssertionError(self.kind)

    def _vary(self, a: np.ndarray, index: int) -> None:
        flat = a.reshape(-1)
        stride = max(1, VARY_STRIDE_BYTES // flat.itemsize)
        pos = flat[(index * 7919) % stride::stride]
        if self.kind == "fp16-kv":
            pos[:] = self.rng.standard_normal(pos.size, dtype=np.float32)
        elif self.kind == "int-tokens":
            pos[:] = self.rng.integers(0, 50_000, size=pos.size)
        elif self.kind == "sparse":
            # same positions each time: density stays ~1 %
            flat[::stride] = self.rng.standard_normal(flat[::stride].size)
        else:
            pos[:] = self.rng.random(pos.size)
        flat[0] = index  # no two objects alike, whatever the rng does

    def make(self, index: int, put: Callable[[Any], Any]) -> tuple[Any, int, int, list]:
        """Return (value to put, original bytes, digest, child refs kept alive by the value)."""
        if self.kind != "mixed":
            a = self.bases[index % len(self.bases)]
            self._vary(a, index)
            return a, a.nbytes, digest(a), []
        base = self.bases[index % len(self.bases)]
        self._vary(base, index)
        flavour = index % 3
        if flavour == 0:  # a plain numpy array (float32 view: another dtype)
            a = base.view(np.float32)
            return a, a.nbytes, digest(a), []
        if flavour == 1:  # raw bytes (a copy, made from the block)
            b = base.tobytes()
            return b, len(b), digest(b), []
        # a dict of Python objects, an array, bytes and refs to other objects
        child_arr = np.arange(index, index + 128 * 1024, dtype=np.int64)  # 1 MiB
        child_obj = {"step": index, "tags": [f"t{index}-{j}" for j in range(50)]}
        children = {put(child_arr): digest(child_arr), put(child_obj): digest(child_obj)}
        refs = list(children)
        half = len(base) // 2
        value = {
            "id": index,
            "array": base[:half],
            "blob": base[half:].tobytes(),
            "meta": {"name": f"obj-{index}", "shape": list(base.shape), "scale": 0.5 * index,
                     "nested": [(i, str(i) * 3) for i in range(200)]},
            "refs": refs,
        }
        d = digest(value, ref_digest=lambda r: children[r])
        return value, nbytes_of(value), d, refs
