"""Ray Serve binding of the example application: ``import_path: embed_service.app:app``.

The image (cluster_configs/ray/Dockerfile) puts this package on PYTHONPATH; the RayService
mounts the cache users' passwords at /var/run/secrets/valkey-app/ (see handler.Settings).
"""

from __future__ import annotations

import asyncio

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from ray_valkey_spill.errors import ConfigError

from .handler import EmbedHandler, Settings


@serve.deployment
class Embedder:
    """POST {"texts": [...], "session_id": "..."} -> embeddings (see handler.EmbedHandler)."""

    def __init__(self):
        self.handler = EmbedHandler(Settings.from_env())

    async def __call__(self, request: Request) -> JSONResponse:
        """Embed the request's texts (cached) and append them to its session."""
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "the body is not JSON"}, status_code=400)
        try:
            # The caches block on the network: keep the replica's event loop free.
            return JSONResponse(await asyncio.to_thread(self.handler.handle, body))
        except ConfigError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)


app = Embedder.bind()
