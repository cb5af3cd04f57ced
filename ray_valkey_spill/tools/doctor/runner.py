"""``Doctor``: runs every check against one server, as the spill user, in order."""

from __future__ import annotations

from ...config import SpillConfig
from ...connection import connection_kwargs
from .gcs import GcsChecks
from .permissions import PermissionChecks
from .report import Check
from .server import ServerChecks

DEFAULT_PINGS = 20


class Doctor(ServerChecks, PermissionChecks, GcsChecks):
    """Runs the checks against one server, as the spill user, and collects a ``Check`` per
    finding."""

    def __init__(self, config: SpillConfig, pings: int = DEFAULT_PINGS,
                 admin: SpillConfig | None = None, check_users: tuple[str, ...] = (),
                 gcs: SpillConfig | None = None):
        """``admin``: credentials to read the server's settings with when the spill user may
        not run CONFIG GET (a least-privilege user); permissions are always checked as the
        spill user. ``check_users``: more ACL users (caches, metrics) whose permissions are
        checked for commands that reach outside their prefix. ``gcs``: the credentials of Ray's
        GCS user (fault tolerance), whose rights are checked too."""
        self.config = config
        self.admin = admin
        self.gcs = gcs
        gcs_user = (gcs.user or "default",) if gcs is not None else ()
        self.check_users = tuple(dict.fromkeys((*check_users, *gcs_user)))
        self.server_mode: str | None = None  # "standalone" / "cluster", from HELLO
        self.pings = pings
        self.checks: list[Check] = []
        self.client = None
        self._admin_client = None
        self._scope = ""  # which cluster nodes the settings checks being added are about

    def add(self, check: str, status: str, detail: str, action: str = "") -> None:
        """Record a finding (prefixed with the cluster nodes it is about, if any)."""
        if self._scope:
            detail = f"{self._scope}: {detail}"
        self.checks.append(Check(check, status, detail, action))

    # -- connection ---------------------------------------------------------------------
    def _client(self, config: SpillConfig | None = None):
        import valkey

        config = config or self.config
        kwargs = connection_kwargs(config)
        kwargs.pop("retry", None)
        kwargs.pop("retry_on_error", None)
        kwargs["socket_timeout"] = max(config.connect_timeout_s, 1.0)
        if config.address.cluster:
            from valkey.cluster import ValkeyCluster

            return ValkeyCluster(**kwargs)
        return valkey.Valkey(**kwargs)

    def run(self) -> list[Check]:
        """Run every check; the findings, in order. Stops after the reachability check if the
        server cannot be reached."""
        self.check_transport()
        if not self.check_reachable():
            return self.checks
        try:
            self.check_version()
            self.check_latency()
            groups = self.read_settings(self._settings_client())
            for nodes, settings in groups:
                if self.config.address.cluster:
                    self._scope = (f"all {len(nodes)} nodes" if len(groups) == 1
                                   else "node " + ", ".join(nodes))
                self.check_memory(settings)
                self.check_persistence(settings)
                self.check_bulk_len(settings)
            self._scope = ""
            self.check_auth()
            self.check_acl()
            self.check_dangerous_permissions()
            self.check_cache_ttls()
            self.check_gcs()
        finally:
            for client in (self.client, self._admin_client):
                try:
                    if client is not None:
                        client.close()
                except Exception:  # noqa: BLE001
                    pass
        return self.checks

