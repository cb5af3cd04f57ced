"""The example Serve application over HTTP, under a real local Ray Serve.

The same import path the RayService names (embed_service.app:app), with PYTHONPATH as the image
sets it, the caches' passwords in files, and a real valkey-server loaded with the shipped ACL.
The test extra installs Ray Serve (ray[serve]); without it this test skips. The handler itself
is also tested without Serve, in tests/integration/test_serve_app.py.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="Ray Serve is not installed (ray[serve])")

from ray_valkey_spill import EmbeddedValkey  # noqa: E402
from ray_valkey_spill.testing.embedded import free_port  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[2] / "cluster_configs"
ACL_FILE = CONFIGS / "base" / "valkey-users.acl"


def post(port: int, body) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/embed", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_embed_endpoint_serves_from_the_cache(tmp_path, monkeypatch):
    import ray
    from ray import serve

    if ray.is_initialized():
        pytest.skip("another Ray is running in this process")
    users = [line.split()[1] for line in ACL_FILE.read_text().splitlines()
             if line.startswith("user ") and line.split()[1] != "default"]
    passwords = {u: secrets.token_urlsafe(24) for u in users}
    env = dict(os.environ, **{f"VALKEY_PASSWORD_{u.upper().replace('-', '_')}": p
                              for u, p in passwords.items()})
    subprocess.run(["sh", str(CONFIGS / "base" / "render-acl.sh"), str(ACL_FILE),
                    str(tmp_path / "users.acl")], env=env, check=True, capture_output=True)
    secrets_dir = tmp_path / "valkey-app"
    secrets_dir.mkdir()
    for user in ("embcache", "session"):
        (secrets_dir / user).write_text(passwords[user])
    server = EmbeddedValkey(config={"aclfile": str(tmp_path / "users.acl")})
    # Replicas inherit the driver's environment, as Ray pods' workers inherit the image's.
    monkeypatch.setenv("EMBED_VALKEY_URL", server.url)
    monkeypatch.setenv("EMBED_SECRETS_DIR", str(secrets_dir))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(CONFIGS / "ray"), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.syspath_prepend(str(CONFIGS / "ray"))
    port = free_port()
    try:
        ray.init(address="local", num_cpus=2, include_dashboard=False)  # never attach to another Ray
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        from embed_service.app import app

        serve.run(app, route_prefix="/embed")
        status, first = post(port, {"texts": ["hello", "world"], "session_id": "c1"})
        assert status == 200 and first["cache_hits"] == 0 and first["session_turns"] == 2
        status, second = post(port, {"texts": ["hello", "world"], "session_id": "c1"})
        assert status == 200 and second["cache_hits"] == 2 and second["session_turns"] == 4
        assert second["embeddings"] == first["embeddings"]
        status, refused = post(port, {"texts": "not a list"})
        assert status == 400 and "texts" in refused["error"]
    finally:
        serve.shutdown()
        ray.shutdown()
        server.stop()
