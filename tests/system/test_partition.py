"""A real network partition: the server runs in its own network namespace behind a veth pair,
and the test cuts the link (the namespace's end goes down, so packets vanish without a reset,
as when a node or a switch drops off). Unlike a paused server (test_ray_faults), nothing
answers at all: not even a new connection's handshake.

Needs root and iproute2 (both present on the CI machine); skipped elsewhere.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from conftest import MiB
from ray_valkey_spill import EmbeddedValkey
from ray_valkey_spill.connection import close_all
from ray_valkey_spill.errors import BackendUnavailableError, SpillError
from ray_valkey_spill.keyspace import scan_keys
from conftest import (CONNECT_TIMEOUT_S, FAST_FAIL, ONE_COMMAND_BOUND_S, make_storage, restore,
                      spill, start_ray, unique_prefix)
from test_ray_faults import (_check_all, _grep_spill_failures, _logs_dir, _put_through_an_outage,
                             _spill_failures_logged, _wait_for_keys)

PASSWORD_ENV = "RVS_PARTITION_TEST_PASSWORD"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class Partitionable:
    """A valkey-server in namespace ``ns``, reached from here at ``address`` over a veth."""

    def __init__(self):
        tag = f"{os.getpid() % 100000}"
        self.ns, self.host_if, self.ns_if = f"rvs{tag}", f"rvh{tag}", f"rvn{tag}"
        subnet = f"10.231.{os.getpid() % 250}"
        self.address = f"{subnet}.2"
        _ip("netns", "add", self.ns)
        try:
            _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
            _ip("link", "set", self.ns_if, "netns", self.ns)
            _ip("addr", "add", f"{subnet}.1/30", "dev", self.host_if)
            _ip("link", "set", self.host_if, "up")
            self._in_ns("ip", "addr", "add", f"{self.address}/30", "dev", self.ns_if)
            self._in_ns("ip", "link", "set", self.ns_if, "up")
            self.password = os.urandom(16).hex()
            os.environ[PASSWORD_ENV] = self.password
            # Not loopback: protected mode wants a password, as a shared server would.
            self.server = EmbeddedValkey(host=self.address, config={"requirepass": self.password},
                                         launcher=("ip", "netns", "exec", self.ns))
        except BaseException:
            self.close()
            raise

    def _in_ns(self, *cmd: str) -> None:
        _ip("netns", "exec", self.ns, *cmd)

    def cut(self) -> None:
        self._in_ns("ip", "link", "set", self.ns_if, "down")

    def heal(self) -> None:
        self._in_ns("ip", "link", "set", self.ns_if, "up")

    def client(self):
        return self.server.client(password=self.password)

    @property
    def url(self) -> str:
        return self.server.url

    def close(self) -> None:
        if getattr(self, "server", None) is not None:
            self.server.stop()
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)  # takes the veth
        os.environ.pop(PASSWORD_ENV, None)


@pytest.fixture(scope="module")
def partitionable():
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to make a network namespace")
    try:
        p = Partitionable()
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot make a network namespace here: {exc.stderr.strip()}")
    try:
        yield p
    finally:
        p.close()
        close_all()


@pytest.fixture
def healed(partitionable):
    yield partitionable
    partitionable.heal()
    close_all()


def test_storage_across_a_partition(healed):
    """Spill, restore and a new connection each fail within their timeouts while the link is
    cut; after it heals the same storage works, older objects restore byte for byte, and the
    chunks of the spill that failed are gone."""
    p = healed
    prefix = unique_prefix("part")
    options = dict(chunk_size_bytes=1 * MiB, compression="none", password_env=PASSWORD_ENV,
                   **FAST_FAIL)
    storage = make_storage(p.url, prefix, **options)
    before = os.urandom(3 * MiB)
    urls = spill(storage, {"c001": before})
    p.cut()
    try:
        started = time.monotonic()
        with pytest.raises(SpillError):
            spill(storage, {"c002": os.urandom(8 * MiB)})
        spill_s = time.monotonic() - started

        started = time.monotonic()
        with pytest.raises(BackendUnavailableError):
            restore(storage, "c001", urls["c001"])
        restore_s = time.monotonic() - started

        close_all()  # the next storage must connect: a handshake nobody answers
        fresh = make_storage(p.url, prefix, **options)
        started = time.monotonic()
        with pytest.raises(BackendUnavailableError):
            spill(fresh, {"c003": b"x" * 1000})
        connect_s = time.monotonic() - started
    finally:
        p.heal()
    # A spill may pay for its write, then for removing the partial keys.
    assert spill_s < 2 * (ONE_COMMAND_BOUND_S + CONNECT_TIMEOUT_S) + 1.0, spill_s
    assert restore_s < ONE_COMMAND_BOUND_S + CONNECT_TIMEOUT_S + 1.0, restore_s
    assert connect_s < 2 * (ONE_COMMAND_BOUND_S + CONNECT_TIMEOUT_S) + 1.0, connect_s

    # The failed spill's writes that TCP still retransmits land now: wait for them, so that
    # the next spill has something to clean up.
    client = p.client()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not scan_keys(client, prefix + "*c002*"):
        time.sleep(0.1)
    after = os.urandom(2 * MiB)
    urls.update(spill(storage, {"c004": after}))
    assert restore(storage, "c001", urls["c001"]) == before
    assert restore(storage, "c004", urls["c004"]) == after
    left = [k for k in scan_keys(client, prefix + "*") if b"c002" in k or b"c003" in k]
    assert not left, f"keys of failed spills left behind: {left[:3]}"
    client.close()


def test_ray_across_a_partition(healed):
    """Ray needs to spill while the link is cut: puts wait (back-pressure), the spills go
    through once it heals, every object restores byte for byte, and shutdown leaves nothing."""
    p = healed
    prefix = unique_prefix("rpart")
    ray = start_ray(p.url, object_store_mib=100, prefix=prefix, chunk_size_bytes=1 * MiB,
                    password_env=PASSWORD_ENV, **FAST_FAIL)
    client = p.client()
    try:
        cut_s = 4.0
        logs = _logs_dir(ray)
        refs, digests, put_s = _put_through_an_outage(
            ray, p.cut, p.heal, cut_s, seed=11, until=lambda: _grep_spill_failures(logs))
        assert put_s < cut_s + 60, f"puts took {put_s:.1f}s after a {cut_s}s partition"
        assert _spill_failures_logged(logs), "no spill met the partition"
        _wait_for_keys(client, prefix)
        started = time.monotonic()
        _check_all(ray, refs, digests)
        assert time.monotonic() - started < 60
        del refs
    finally:
        ray.shutdown()
    left = scan_keys(client, prefix + "*")
    assert not left, f"{len(left)} keys left after shutdown, e.g. {left[:3]}"
    client.close()
