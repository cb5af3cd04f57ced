"""The example Serve application the RayService runs (cluster_configs/ray/embed_service).

Its request handling runs against a real valkey-server loaded with the shipped ACL, as the
deployed users embcache and session, with their passwords in files as the mounted Secret
provides them. The Serve binding itself is imported and checked against rayservice.yaml when
Ray Serve is installed (ray[serve]); it is skipped otherwise.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import numpy as np
import pytest
import yaml

from support import render_acl, shipped_acl_users
from ray_valkey_spill import EmbeddedValkey
from ray_valkey_spill.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "cluster_configs"
ACL_FILE = CONFIGS / "base" / "valkey-users.acl"
RENDER_SCRIPT = CONFIGS / "base" / "render-acl.sh"


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """(server, admin password, secrets dir): the shipped ACL and the app's password files."""
    work = tmp_path_factory.mktemp("serve-app")
    passwords = {u: secrets.token_urlsafe(24) for u in shipped_acl_users()}
    aclfile = work / "users.acl"
    result = render_acl(aclfile, passwords)
    assert result.returncode == 0, result.stderr
    secrets_dir = work / "valkey-app"
    secrets_dir.mkdir()
    for user in ("embcache", "session"):  # as Secret valkey-embed-app mounts them
        path = secrets_dir / user
        path.write_text(passwords[user])
        path.chmod(0o400)
    server = EmbeddedValkey(config={"aclfile": str(aclfile)})
    try:
        yield server, passwords["admin"], secrets_dir
    finally:
        server.stop()


@pytest.fixture
def app_module(monkeypatch, deployed):
    server, _, secrets_dir = deployed
    monkeypatch.syspath_prepend(str(CONFIGS / "ray"))
    monkeypatch.setenv("EMBED_VALKEY_URL", server.url)
    monkeypatch.setenv("EMBED_SECRETS_DIR", str(secrets_dir))
    from embed_service import handler

    return handler


def test_handler_serves_from_the_cache_and_records_the_session(app_module, deployed):
    server, admin_password, _ = deployed
    handler = app_module.EmbedHandler(app_module.Settings.from_env())
    texts = [f"hello {secrets.token_hex(4)}", "a second text"]
    first = handler.handle({"texts": texts, "session_id": "conv-1"})
    assert first["cache_hits"] == 0 and first["session_turns"] == 2
    second = handler.handle({"texts": texts, "session_id": "conv-1"})
    assert second["cache_hits"] == 2 and second["session_turns"] == 4
    assert np.allclose(first["embeddings"], second["embeddings"])
    assert np.allclose(first["embeddings"], app_module.embed_texts(texts))
    assert handler.sessions.last("conv-1", 2) == texts
    # Stored as the deployed users, under their prefixes, every key with a TTL.
    admin = server.client(username="admin", password=admin_password)
    keys = [k.decode() for k in admin.scan_iter(count=1000)]
    assert keys and all(k.startswith(("emb:", "session:")) for k in keys)
    assert all(admin.ttl(k) > 0 for k in keys)


def test_handler_refuses_bad_requests_without_echoing_them(app_module):
    handler = app_module.EmbedHandler(app_module.Settings.from_env())
    secret_text = "do-not-echo-" + secrets.token_hex(8)
    for body in ([secret_text], {"texts": secret_text}, {"texts": []},
                 {"texts": [secret_text] * 300}, {"texts": ["x"], "session_id": 7},
                 {"texts": [1, secret_text]}):
        with pytest.raises(ConfigError) as info:
            handler.handle(body)
        assert secret_text not in str(info.value)


def test_serve_binding_matches_the_rayservice(app_module):
    pytest.importorskip("starlette", reason="Ray Serve is not installed (ray[serve])")
    serve = pytest.importorskip("ray.serve", reason="Ray Serve is not installed (ray[serve])")
    from embed_service import app as app_py

    assert isinstance(app_py.app, serve.Application)
    service = next(d for d in yaml.safe_load_all((CONFIGS / "ray" / "rayservice.yaml").read_text())
                   if d and d["kind"] == "RayService")
    # The embedding app; the llm app beside it is checked in tests/extras/lmcache.
    (application,) = [a for a in yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]
                      if a["import_path"].startswith("embed_service.")]
    assert application["import_path"] == "embed_service.app:app"
    assert [d["name"] for d in application["deployments"]] == [app_py.Embedder.name]
