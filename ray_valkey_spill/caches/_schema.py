"""The declared identity of an embedding cache, and the check every vector passes on its way in.

A vector is only meaningful next to the model that produced it: the model name, its revision,
the dimension and dtype of its output and the role of the input (many retrieval models embed a
query and a document differently). All five are part of every key, each component escaped so
that no two schemas share a key range, and ``None`` (undeclared) spelled in a way no declared
value can be. What does not fit is refused on write (``CacheValueError`` naming the item) and
counted as a miss on read, so one bad writer cannot poison every later reader.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._values import as_numpy
from ..errors import CacheValueError, ConfigError

# Real element types an embedding model emits: floats, and int8/uint8 for quantized vectors.
EMBEDDING_DTYPES = ("float32", "float16", "bfloat16", "float64", "int8", "uint8")
MAX_DIMENSION = 1 << 20
# key_part() refuses empty names, so an empty component can only mean "undeclared".
UNDECLARED = ""


def _dtype(value: Any) -> np.dtype:
    try:
        name = value if isinstance(value, str) else np.dtype(value).name
    except TypeError:
        name = None
    if name not in EMBEDDING_DTYPES:
        raise ConfigError("dtype", value, f"one of {', '.join(EMBEDDING_DTYPES)}")
    if name == "bfloat16":
        try:
            import ml_dtypes
        except ImportError as exc:
            raise ConfigError("dtype", value, "bfloat16 needs the ml-dtypes package") from exc
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


@dataclass(frozen=True)
class EmbeddingSchema:
    """What a cache's vectors are: model, revision, dimension, dtype and input role.

    Args:
        model: the embedding model's name.
        revision: the model revision or version (None: undeclared).
        dimension: the length of every vector (None: any length, still one 1-D vector).
        dtype: element type stored: float32 (default), float16, bfloat16, float64, int8, uint8.
            Inputs are cast to it when the cast keeps their kind (a Python list of floats, a
            float64 array); complex values, or floats into an integer dtype, are refused.
        role: what was embedded, e.g. "query" or "document" (None: undeclared).

    Raises:
        ConfigError: a field of the wrong type or out of range.
    """

    model: str
    revision: str | None = None
    dimension: int | None = None
    dtype: Any = "float32"
    role: str | None = None

    def __post_init__(self):
        from ._base import key_part

        for field in ("model", "revision", "role"):
            value = getattr(self, field)
            if value is not None or field == "model":
                key_part(field, value)
        dim = self.dimension
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int)
                                or not 1 <= dim <= MAX_DIMENSION):
            raise ConfigError("dimension", dim, f"None or an integer from 1 to {MAX_DIMENSION}")
        object.__setattr__(self, "dtype", _dtype(self.dtype))

    def key_head(self, prefix: str) -> str:
        """``<prefix><model>:<revision>:<role>:<dtype>x<dimension>:``, injective in all five."""
        from ._base import key_part

        def part(field: str) -> str:
            value = getattr(self, field)
            return UNDECLARED if value is None else key_part(field, value)

        dim = UNDECLARED if self.dimension is None else str(self.dimension)
        return (f"{prefix}{key_part('model', self.model)}:{part('revision')}:{part('role')}:"
                f"{self.dtype.name}x{dim}:")

    def coerce(self, value: Any, where: str) -> np.ndarray:
        """``value`` as one vector of this schema (cast to its dtype), else CacheValueError
        whose message starts with ``where`` (e.g. "vector 3 (text 'abc')")."""
        if isinstance(value, (list, tuple)):
            try:
                array = np.asarray(value)
            except (TypeError, ValueError) as exc:
                raise CacheValueError(f"{where}: not a numeric vector: {exc}") from exc
        else:
            try:
                array = as_numpy(value)
            except CacheValueError as exc:
                raise CacheValueError(f"{where}: {exc}") from exc
        if array.ndim != 1:
            raise CacheValueError(f"{where}: one embedding must be a 1-D vector, got shape "
                                  f"{array.shape} (pass a 2-D array as the batch, one row per text)")
        if self.dimension is not None and array.shape[0] != self.dimension:
            raise CacheValueError(f"{where}: {array.shape[0]} values, the schema of model "
                                  f"{self.model!r} declares dimension {self.dimension}")
        if array.shape[0] == 0:
            raise CacheValueError(f"{where}: an empty vector")
        if array.dtype != self.dtype:
            array = self._cast(array, where)
        if self.dtype.kind == "f" or self.dtype.kind == "V":
            if not np.isfinite(array).all():
                raise CacheValueError(f"{where}: holds NaN or infinite values (after the cast "
                                      f"to {self.dtype.name})")
        return array

    def coerce_rows(self, vectors: Any) -> np.ndarray | None:
        """The whole batch as one 2-D array of this schema, checked in one pass, or None when
        it is not a uniform numeric batch or any row does not fit; the caller then checks row
        by row with ``coerce`` to name each misfit. The rules are ``coerce``'s: a list becomes
        an array the same way and the same casts are allowed, only over all rows at once
        (converting 1,000 float lists as one batch costs half what 1,000 conversions do)."""
        if isinstance(vectors, np.ndarray):
            batch = vectors
        elif isinstance(vectors, (list, tuple)) and vectors and _uniform_lists(vectors):
            try:
                batch = np.asarray(vectors)
            except (TypeError, ValueError):  # ragged, or not numbers
                return None
        else:
            return None
        if batch.ndim != 2 or batch.shape[1] == 0 \
                or (self.dimension is not None and batch.shape[1] != self.dimension):
            return None
        if batch.dtype != self.dtype:
            try:
                batch = self._cast(batch, "batch")
            except CacheValueError:
                return None
        if self.dtype.kind in "fV" and not np.isfinite(batch).all():
            return None
        return batch

    def _cast(self, array: np.ndarray, where: str) -> np.ndarray:
        src = array.dtype
        ml = (src.type.__module__ or "").startswith("ml_dtypes")
        if self.dtype.kind in "fV":  # float target: ints and floats of any width
            ok = src.kind in "iuf" or ml
        else:  # int8/uint8 target: integers whose values fit (a list of ints is int64)
            info = np.iinfo(self.dtype)
            ok = src.kind in "iu" and int(array.min()) >= info.min and int(array.max()) <= info.max
        if not ok:
            raise CacheValueError(f"{where}: dtype {src} does not cast to the declared "
                                  f"{self.dtype.name} (complex, bool, non-numeric, floats into "
                                  "integers, or integers out of range)")
        with np.errstate(over="ignore", invalid="ignore"):
            return array.astype(self.dtype)  # float overflow -> inf, refused by the caller

    def fits(self, array: np.ndarray) -> bool:
        """Whether a stored array is a vector of this schema (read side: else a counted miss)."""
        return (array.ndim == 1 and array.dtype == self.dtype
                and (array.shape[0] == self.dimension if self.dimension is not None
                     else array.shape[0] > 0))


def _uniform_lists(vectors: list | tuple) -> bool:
    """Whether every row is a non-empty list or tuple starting with a Python float, or every row
    with an int. One array of such rows has the dtype each row would get on its own, except for a
    row of bools, which on its own is refused (``coerce``), not cast: those go row by row."""
    first = vectors[0]
    if type(first) is not list and type(first) is not tuple or not first:
        return False
    kind = type(first[0])
    if kind is not float and kind is not int:
        return False
    return all((type(v) is list or type(v) is tuple) and v and type(v[0]) is kind
               for v in vectors)
