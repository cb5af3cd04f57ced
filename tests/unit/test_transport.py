"""The one retry policy (no server: a function that fails on cue stands in for the network)."""

from __future__ import annotations

import pytest
from valkey.exceptions import ConnectionError as ValkeyConnectionError

from ray_valkey_spill.config import SpillConfig
from ray_valkey_spill.errors import ServerReplyError
from ray_valkey_spill.spill import transport as T


def _transport(monkeypatch, url="valkey://h:6379/0", retries=3) -> T.Transport:
    monkeypatch.setattr(T.time, "sleep", lambda s: None)
    return T.Transport(SpillConfig.from_params({"url": url, "retries": retries}), lambda: None)


def _failing(*errors):
    calls = []

    def fn():
        calls.append(1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return "ok"
    return fn, calls


def test_transient_faults_are_retried_then_succeed(monkeypatch):
    fn, calls = _failing(ValkeyConnectionError("reset"), ServerReplyError("LOADING data"),
                         TimeoutError("slow"))
    assert _transport(monkeypatch).with_retries(fn) == "ok" and len(calls) == 4


def test_standalone_retries_are_bounded_by_the_option(monkeypatch):
    fn, calls = _failing(*[ValkeyConnectionError("down")] * 10)
    with pytest.raises(ValkeyConnectionError):
        _transport(monkeypatch, retries=2).with_retries(fn)
    assert len(calls) == 3  # the first try and two retries


def test_an_error_reply_is_raised_at_once(monkeypatch):
    fn, calls = _failing(ServerReplyError("NOPERM no permissions"))
    with pytest.raises(ServerReplyError, match="NOPERM"):
        _transport(monkeypatch).with_retries(fn)
    assert len(calls) == 1


def test_a_cluster_rides_out_a_failover_by_time_not_count(monkeypatch):
    fn, calls = _failing(*[ValkeyConnectionError("primary gone")] * 12)
    assert _transport(monkeypatch, "valkey+cluster://h:6379", retries=1).with_retries(fn) == "ok"
    assert len(calls) == 13
