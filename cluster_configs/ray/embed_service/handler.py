"""Request handling of the example Serve application, without Ray Serve.

An embedding endpoint in front of the shared Valkey: texts whose vectors are in the embedding
cache (``emb:``) are served from it, the others are computed and cached; the texts of a
request are appended to its conversation in the session store (``session:``). Each cache
connects as its own least-privilege ACL user, with the password read from a mounted Secret
file (``password_file``), never from the URL or an environment variable.

The embedding model is a stand-in (hashed character trigrams, 64 dimensions) so that the
image needs no model download; replace ``embed_texts`` with your model.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np

from ray_valkey_spill import EmbeddingCache, SessionStore, connect
from ray_valkey_spill.errors import ConfigError

MODEL = "trigram-hash-64"
DIMENSIONS = 64
MAX_TEXTS = 256
MAX_TEXT_CHARS = 8192


@dataclass(frozen=True)
class Settings:
    """Where the caches live and how each logs in (no secret: only the files' paths)."""

    url: str = "valkey://valkey.ai-ml.svc.cluster.local:6379/0"
    emb_user: str = "embcache"
    emb_password_file: str = "/var/run/secrets/valkey-app/embcache"
    session_user: str = "session"
    session_password_file: str = "/var/run/secrets/valkey-app/session"
    emb_ttl_seconds: int = 7 * 24 * 3600
    session_ttl_seconds: int = 24 * 3600

    @classmethod
    def from_env(cls) -> "Settings":
        """Defaults overridden by EMBED_VALKEY_URL, EMBED_SECRETS_DIR (holds embcache, session)."""
        defaults = cls()
        secrets_dir = os.environ.get("EMBED_SECRETS_DIR")
        return cls(
            url=os.environ.get("EMBED_VALKEY_URL", defaults.url),
            emb_password_file=(os.path.join(secrets_dir, "embcache") if secrets_dir
                               else defaults.emb_password_file),
            session_password_file=(os.path.join(secrets_dir, "session") if secrets_dir
                                   else defaults.session_password_file),
        )


def embed_texts(texts: list[str]) -> np.ndarray:
    """Stand-in model: L2-normalised counts of hashed character trigrams, float32."""
    out = np.zeros((len(texts), DIMENSIONS), dtype=np.float32)
    for row, text in enumerate(texts):
        padded = f"  {text}  "
        for i in range(len(padded) - 2):
            digest = hashlib.blake2b(padded[i:i + 3].encode(), digest_size=2).digest()
            out[row, int.from_bytes(digest, "little") % DIMENSIONS] += 1.0
        norm = np.linalg.norm(out[row])
        if norm:
            out[row] /= norm
    return out


def parse_request(body: object) -> tuple[list[str], str | None]:
    """(texts, session_id) of a request body; ConfigError naming the bad field otherwise."""
    if not isinstance(body, dict):
        raise ConfigError("body", type(body).__name__, 'a JSON object {"texts": [...]}')
    texts = body.get("texts")
    if (not isinstance(texts, list) or not 0 < len(texts) <= MAX_TEXTS
            or not all(isinstance(t, str) and len(t) <= MAX_TEXT_CHARS for t in texts)):
        raise ConfigError("texts", "<list>" if isinstance(texts, list) else type(texts).__name__,
                          f"a list of 1 to {MAX_TEXTS} strings of at most {MAX_TEXT_CHARS} characters")
    session_id = body.get("session_id")
    if session_id is not None and not (isinstance(session_id, str) and 0 < len(session_id) <= 128):
        raise ConfigError("session_id", "<given>", "a string of 1 to 128 characters, or absent")
    return texts, session_id


class EmbedHandler:
    """Serve one request: cached vectors first, the model for the rest, then cache them."""

    def __init__(self, settings: Settings):
        emb_client = connect(settings.url, username=settings.emb_user,
                             password_file=settings.emb_password_file)
        session_client = connect(settings.url, username=settings.session_user,
                                 password_file=settings.session_password_file)
        self.cache = EmbeddingCache(emb_client, MODEL, ttl_seconds=settings.emb_ttl_seconds)
        self.sessions = SessionStore(session_client, ttl_seconds=settings.session_ttl_seconds)

    def handle(self, body: object) -> dict:
        """{"embeddings": [[...], ...], "cache_hits": n, "session_turns": n | None}."""
        texts, session_id = parse_request(body)
        vectors = self.cache.get_many(texts)
        missing = [i for i, v in enumerate(vectors) if v is None]
        if missing:
            computed = embed_texts([texts[i] for i in missing])
            self.cache.put_many([texts[i] for i in missing], computed)
            for i, vector in zip(missing, computed):
                vectors[i] = vector
        turns = self.sessions.append(session_id, *texts) if session_id else None
        return {"embeddings": [np.asarray(v, dtype=np.float32).tolist() for v in vectors],
                "cache_hits": len(texts) - len(missing), "session_turns": turns}
