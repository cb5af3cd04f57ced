"""A valkey-server started with the deployed configuration: the exact ``valkey.conf`` of the
``valkey-config`` ConfigMap of the standalone overlay
(``cluster_configs/overlays/standalone/valkey.yaml``) and the ACL users of
``cluster_configs/base/valkey-users.acl`` rendered by ``base/render-acl.sh`` with the init
container's environment (its ``VALKEY_ACL_OFF_USERS``) and random passwords.

Only what cannot hold on this machine is changed: ``port``, ``bind`` (loopback), ``dir`` and
``aclfile`` (a private temp directory), plus the named ``overrides`` (a smaller ``maxmemory``
for a shared test machine, persistence variants).
Passwords go into environment variables (``password_env(user)`` names them), never on a
command line; Ray's IO workers inherit them from the process that starts Ray.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from ..errors import BackendUnavailableError, ConfigError
from ..testing.embedded import free_port, valkey_server_binary

MANIFEST = Path("overlays", "standalone", "valkey.yaml")
CONFIGMAP_NAME = "valkey-config"
ACL_TEMPLATE = Path("base", "valkey-users.acl")
RENDER_SCRIPT = Path("base", "render-acl.sh")
PASSWORD_ENV_PREFIX = "RVS_DEPLOYED_PASSWORD_"


def default_configs_dir() -> Path:
    """``cluster_configs/`` of the source checkout this package runs from."""
    return Path(__file__).resolve().parents[2] / "cluster_configs"


def deployed_settings(configs_dir: Path) -> tuple[str, dict[str, str]]:
    """The shipped ``valkey.conf`` text and the environment of the init container that renders
    the ACL file (without its secrets)."""
    import yaml

    if not (configs_dir / MANIFEST).is_file():
        raise ConfigError("cluster_configs", str(configs_dir),
                          f"no {MANIFEST} there; allowed: the cluster_configs/ directory of a "
                          "checkout (--cluster-configs), which an installed package lacks")
    conf, env = None, {}
    with open(configs_dir / MANIFEST, encoding="utf-8") as f:
        for doc in yaml.safe_load_all(f):
            if not doc:
                continue
            if doc.get("kind") == "ConfigMap" and doc["metadata"]["name"] == CONFIGMAP_NAME:
                conf = doc["data"]["valkey.conf"]
            if doc.get("kind") == "StatefulSet":
                for c in doc["spec"]["template"]["spec"].get("initContainers", []):
                    env.update({e["name"]: e["value"] for e in c.get("env", []) if "value" in e})
    if conf is None:
        raise BackendUnavailableError(f"no ConfigMap {CONFIGMAP_NAME} in {configs_dir / MANIFEST}")
    return conf, env


def password_env(user: str) -> str:
    """Name of the environment variable holding ``user``'s password."""
    return PASSWORD_ENV_PREFIX + user.upper().replace("-", "_")


class DeployedValkey:
    """Context manager: the deployed valkey.conf (with ``overrides``) and ACL users on a free
    loopback port; ``url`` is its TCP URL (no credentials in it)."""

    def __init__(self, configs_dir: Path | None = None, overrides: dict[str, str] | None = None):
        self.configs_dir = Path(configs_dir or default_configs_dir())
        self.overrides = dict(overrides or {})
        self.work = Path(tempfile.mkdtemp(prefix="rvs-deployed-"))
        self.port = free_port()
        self.url = f"valkey://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def _render_acl(self, init_env: dict[str, str]) -> Path:
        users = [line.split()[1] for line in
                 (self.configs_dir / ACL_TEMPLATE).read_text(encoding="utf-8").splitlines()
                 if line.startswith("user ") and line.split()[1] != "default"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("VALKEY_PASSWORD_")}
        env.update(init_env)
        for user in users:
            password = os.environ.setdefault(password_env(user), secrets.token_urlsafe(24))
            env["VALKEY_PASSWORD_" + user.upper().replace("-", "_")] = password
        out = self.work / "users.acl"
        done = subprocess.run(["sh", str(self.configs_dir / RENDER_SCRIPT),
                               str(self.configs_dir / ACL_TEMPLATE), str(out)],
                              env=env, capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise BackendUnavailableError(f"render-acl.sh failed: {done.stderr.strip()[-500:]}")
        return out

    def _config(self, conf_text: str, aclfile: Path) -> Path:
        data_dir = self.work / "data"
        data_dir.mkdir()
        local = {"port": str(self.port), "bind": "127.0.0.1", "dir": str(data_dir),
                 "aclfile": str(aclfile), **self.overrides}
        lines, replaced = [], set()
        for line in conf_text.splitlines():
            words = line.split()
            if words and not line.lstrip().startswith("#") and words[0] in local:
                line = f"{words[0]} {local[words[0]]}"
                replaced.add(words[0])
            lines.append(line)
        lines += [f"{k} {v}" for k, v in local.items() if k not in replaced]
        path = self.work / "valkey.conf"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    def __enter__(self) -> "DeployedValkey":
        conf_text, init_env = deployed_settings(self.configs_dir)
        self.conf = self._config(conf_text, self._render_acl(init_env))
        self.log = self.work / "server.log"
        self._start(15)
        return self

    def _start(self, timeout_s: float) -> None:
        self.process = subprocess.Popen([valkey_server_binary(), str(self.conf), "--logfile",
                                         str(self.log)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        import valkey

        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise BackendUnavailableError(f"valkey-server refused the deployed config: "
                                              f"{self.log.read_text()[-1000:]}")
            try:
                with valkey.Valkey(port=self.port, socket_timeout=1) as anonymous:
                    anonymous.ping()
            except valkey.exceptions.AuthenticationError:
                # Up, and the default user is off as deployed. An unauthenticated PING is
                # refused before the server would answer LOADING: the admin's PING waits for
                # the data to load.
                try:
                    with self.admin_client(socket_timeout=1) as admin:
                        admin.ping()
                    return
                # BusyLoadingError, or no answer yet: a server loading GBs answers slowly.
                except (valkey.exceptions.ConnectionError, valkey.exceptions.TimeoutError):
                    pass
            except (valkey.exceptions.ConnectionError, valkey.exceptions.TimeoutError):
                pass
            else:
                self.__exit__()
                raise BackendUnavailableError("the default user answered: the ACL did not load")
            if time.monotonic() > deadline:
                self.__exit__()
                raise BackendUnavailableError("valkey-server with the deployed config did not "
                                              f"come up within {timeout_s:.0f} s")
            time.sleep(0.05)

    def restart(self, crash: bool = False) -> None:
        """Stop the server, as a pod's SIGTERM does (a clean shutdown: with save rules, a final
        snapshot) or with ``crash`` by SIGKILL (nothing more written), and start it again on
        the same data directory, port and config."""
        if crash:
            self.process.kill()
        else:
            self.process.terminate()
        self.process.wait(timeout=120)
        self._start(120)  # loading the data set takes a while

    def admin_client(self, **kwargs):
        """A new valkey-py client as the deployed ``admin`` user (``kwargs``: socket options)."""
        import valkey

        return valkey.Valkey(port=self.port, username="admin",
                             password=os.environ[password_env("admin")], **kwargs)

    def options(self, user: str) -> dict[str, str]:
        """Connection options (``username``, ``password_env``) for ``user``."""
        return {"username": user, "password_env": password_env(user)}

    def __exit__(self, *exc) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.work, ignore_errors=True)
