"""``ray-valkey-spill gc``: find and remove spilled keys whose Ray session is gone.

Ray never deletes what a dead raylet spilled (its reference counts die with it), nor anything
after ``ray stop`` or a crash. This command collects those leftovers.

**Liveness is decided per SESSION, never per node.** With this backend, an object spilled by a
node that has since died is still restored by any other node, as long as its owner lives (the
owner keeps the URL). So the keys of a dead node are live data while any node of its session
is alive, and a per-node rule would destroy them. A session is *live* when any of its
heartbeat keys (``<prefix><session>:<node>:hb``, the unix time of the last beat, rewritten
every 30 s by every spill/restore IO worker) is younger than ``--grace-s``.

**Sessions without any heartbeat.** An IO worker starts its heartbeat thread at its first
spill or restore, but the first beat can lose the race with that spill, or fail while the
server is unreachable; keys written by an older version carry no heartbeat at all. Treating "no
heartbeat" as "dead" would delete the objects of a session that started a second ago, and
treating it as "live" would leak forever. So such a session is judged by its keys: it is
deleted only when every object key's ``OBJECT IDLETIME`` (seconds since it was last written or
read; SCAN, MEMORY USAGE and OBJECT do not reset it, a GET does, so heartbeat keys are left out)
is at least ``--grace-s``. A session that
just started always has a key younger than that. When the server cannot tell (an LFU
``maxmemory-policy`` does not track idle time, or the ACL user may not run OBJECT), a session
without heartbeats is kept and reported as undecidable.

Heartbeat times come from the nodes' clocks and are compared with this host's clock, so
``--grace-s`` must also exceed any clock skew between them (a beat from the future counts as
fresh).

The same idle-time test is applied to sessions whose heartbeats are all stale, as a second
safeguard: a key read or written within the grace period means that something of that session
still works, whatever the heartbeat says (e.g. a broken heartbeat thread).

**Running clusters.** ``--ray-address`` names the GCS of a running cluster; its current session
is kept whatever its heartbeats say (a ``ray start --head`` cluster has no driver stamp, so the
objects of its dead spilling nodes would otherwise depend on their idle times alone).

**Orphan chunks in live sessions.** A spill writes its chunks first and the manifest last; a
spill worker killed in between (a preempted node, the OOM killer) leaves chunks that no manifest
names, so nothing can ever restore or delete them, and a long-lived cluster (a RayService)
would keep them for weeks. A chunk key whose manifest does not exist and whose idle time is at
least ``--orphan-grace-s`` (default an hour: a spill in flight keeps writing its object's chunks
and ends in seconds; no restore reads a chunk without a manifest) is collected even in a live
session, and checked once more just before it is unlinked.

**Races.** Phase 1 SCANs the prefix once and keeps only per-session aggregates and the orphan
chunk keys (memory is O(sessions + orphans), not O(keys)). Phase 2 (``--yes``) re-reads the
heartbeats of the doomed sessions,
then SCANs again and UNLINKs, in pipelined batches, only keys that parse as this backend's keys
of a doomed session; a heartbeat key met during that pass is read first and a fresh one stops
the deletion of its session. Keys of other prefixes (``emb:``, ``vllm:kv:``, ``session:``) and
keys that do not have the exact shape this backend writes are never touched.

Usage::

    ray-valkey-spill gc --url valkey://host:6379/0 [--prefix ray:] [--grace-s 600]
                        [--password-env VAR] [--username USER] [--ray-address HOST:PORT]
                        [--orphan-grace-s 3600] [--yes] [--json]

It only reports unless ``--yes`` is given. Exit code 0 on success, 2 on a bad argument
or an unreachable server.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from dataclasses import dataclass, field

from ..keyspace import SCAN_COUNT
from ..spill import keys as K
from ..config import SpillConfig
from ..errors import BackendUnavailableError, ConfigError, RayValkeySpillError
from ..spill.heartbeat import HEARTBEAT_INTERVAL_S
from ..cli.options import add_connection_options, config_from_args, fail
from ..cli.tables import render_table

DEFAULT_GRACE_S = 600.0
DEFAULT_ORPHAN_GRACE_S = 3600.0
MIN_SAFE_GRACE_S = 3 * HEARTBEAT_INTERVAL_S
UNLINK_BATCH = 1000
DEFAULT_SAMPLE_KEYS = 64  # MEMORY USAGE samples per session; bytes are extrapolated
PROGRESS_EVERY_S = 2.0

KEEP_LIVE = "keep: live"
KEEP_YOUNG = "keep: no heartbeat, keys recently used"
KEEP_TOUCHED = "keep: heartbeat stale but keys recently used"
KEEP_UNKNOWN = "keep: no heartbeat, key age unknown"
KEEP_RUNNING = "keep: current session of the Ray cluster at {}"
DELETE = "delete"


@dataclass
class SessionInfo:
    """What the survey found of one session: its keys, nodes, heartbeats, key idle times,
    sampled sizes and orphan chunks, and the verdict."""

    name: str
    keys: int = 0
    nodes: set = field(default_factory=set)
    heartbeats: dict = field(default_factory=dict)  # hb key -> unix time (None if unreadable)
    min_idle_s: float | None = None
    idle_unknown: bool = False
    sampled_keys: int = 0
    sampled_bytes: int = 0
    verdict: str = ""
    deleted: int = 0
    orphans: list = field(default_factory=list)  # chunk keys without a manifest, idle enough
    orphans_deleted: int = 0

    def note_idle(self, idle) -> None:
        """Fold in one key's idle time in seconds (None: the server could not tell)."""
        if idle is None:
            self.idle_unknown = True
        elif self.min_idle_s is None or idle < self.min_idle_s:
            self.min_idle_s = float(idle)

    @property
    def last_beat(self) -> float | None:
        """Unix time of the session's newest readable heartbeat, or None."""
        beats = [t for t in self.heartbeats.values() if t is not None]
        return max(beats) if beats else None

    @property
    def est_bytes(self) -> int:
        """Estimated bytes of the session's keys, extrapolated from the MEMORY USAGE samples."""
        if not self.sampled_keys:
            return 0
        return round(self.sampled_bytes / self.sampled_keys * self.keys)

    def judge(self, now: float, grace_s: float) -> str:
        """The verdict at unix time ``now``: keep while a heartbeat or a key use is younger than
        ``grace_s``, or while a session without heartbeats cannot tell its keys' age; else delete."""
        last = self.last_beat
        if last is not None and now - last < grace_s:
            return KEEP_LIVE
        recently_used = self.min_idle_s is not None and self.min_idle_s < grace_s
        if self.heartbeats:  # all stale; key idle times are only a second safeguard here
            return KEEP_TOUCHED if recently_used else DELETE
        if self.idle_unknown:  # no heartbeat and no way to tell the keys' age: keep
            return KEEP_UNKNOWN
        return KEEP_YOUNG if recently_used else DELETE


def _decode(key) -> str | None:
    if isinstance(key, bytes):
        try:
            return key.decode("ascii")
        except UnicodeDecodeError:
            return None
    return key


def _beat_time(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class _Progress:
    def __init__(self, enabled: bool, what: str):
        self.enabled, self.what = enabled, what
        self.count, self.started, self.last = 0, time.monotonic(), time.monotonic()

    def add(self, n: int) -> None:
        self.count += n
        now = time.monotonic()
        if self.enabled and now - self.last >= PROGRESS_EVERY_S:
            self.last = now
            print(f"gc: {self.what} {self.count} keys ({now - self.started:.0f}s)",
                  file=sys.stderr, flush=True)


def _batches(iterable, size: int):
    batch = []
    for item in iterable:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _scan_parsed(client, prefix: str, bar: "_Progress"):
    """SCAN ``prefix*`` a batch at a time, yielding [(raw key, text, parse_key result or None)]."""
    for batch in _batches(client.scan_iter(match=_glob_escape(prefix) + "*", count=SCAN_COUNT),
                          SCAN_COUNT):
        bar.add(len(batch))
        parsed = []
        for raw in batch:
            text = _decode(raw)
            parsed.append((raw, text, K.parse_key(prefix, text) if text is not None else None))
        yield parsed


def survey(client, prefix: str, sample_keys: int = DEFAULT_SAMPLE_KEYS,
           progress: bool = False, rng: random.Random | None = None,
           orphan_grace_s: float | None = None) -> tuple[dict, int]:
    """Phase 1: one SCAN of ``prefix*``; per-session counts, heartbeats, idle times, samples,
    and (with ``orphan_grace_s``) the chunk keys without a manifest idle at least that long.

    Returns (sessions by name, number of keys under the prefix that are not this backend's)."""
    rng = rng or random.Random()
    sessions: dict[str, SessionInfo] = {}
    foreign = 0
    for batch in _scan_parsed(client, prefix, _Progress(progress, "scanned")):
        ours = [(raw, text, parsed) for raw, text, parsed in batch if parsed is not None]
        foreign += len(batch) - len(ours)
        if not ours:
            continue
        pipe = client.pipeline(transaction=False)
        queued: list[tuple[str, SessionInfo, object]] = []  # (what, session, key) per command
        idle_of: dict = {}
        for raw, text, (session, node, is_hb) in ours:
            info = sessions.setdefault(session, SessionInfo(session))
            info.keys += 1
            info.nodes.add(node)
            if not is_hb:  # gc's own GET resets a heartbeat key's idle time: skip those
                pipe.object("IDLETIME", raw)
                queued.append(("idle", info, raw))
                base = K.chunk_base(text)
                if orphan_grace_s is not None and base is not None:
                    pipe.exists(K.manifest_key(base))
                    queued.append(("manifest", info, raw))
            # reservoir-style sampling: every key of a session has the same chance to be sized
            if info.keys <= sample_keys or rng.random() < sample_keys / info.keys:
                pipe.memory_usage(raw)
                queued.append(("size", info, raw))
            if is_hb:
                pipe.get(raw)
                queued.append(("beat", info, raw))
        for (what, info, raw), reply in zip(queued, pipe.execute(raise_on_error=False)):
            failed = isinstance(reply, Exception)
            if what == "idle":
                # a key deleted between SCAN and OBJECT answers None: it is gone, not unknown
                if failed:
                    info.note_idle(None)
                elif reply is not None:
                    info.note_idle(reply)
                    idle_of[raw] = reply
            elif what == "manifest":
                if not failed and reply == 0 and idle_of.get(raw, -1) >= orphan_grace_s:
                    info.orphans.append(raw)
            elif what == "size":
                if not failed and reply is not None:
                    info.sampled_keys += 1
                    info.sampled_bytes += int(reply)
            else:
                info.heartbeats[_decode(raw)] = None if failed else _beat_time(reply)
    return sessions, foreign


def collect(client, prefix: str, sessions: dict, grace_s: float, progress: bool = False) -> int:
    """Phase 2: UNLINK every key of the sessions judged DELETE; returns how many were removed."""
    doomed = {name for name, info in sessions.items() if info.verdict == DELETE}
    # A heartbeat may have come back since the survey (e.g. a partition healed): re-read them.
    for name in sorted(doomed):
        if _fresh_beat_each(client, sessions[name].heartbeats, grace_s):
            sessions[name].verdict = KEEP_LIVE + " (beat again during gc)"
            doomed.discard(name)
    if not doomed:
        return 0
    removed = 0
    for batch in _scan_parsed(client, prefix, _Progress(progress, "gc pass: scanned")):
        victims = []
        for raw, text, parsed in batch:
            if parsed is None or parsed[0] not in doomed:
                continue
            session, _, is_hb = parsed
            if is_hb and _fresh_beat_each(client, [text], grace_s):
                sessions[session].verdict = KEEP_LIVE + " (beat again during gc)"
                doomed.discard(session)
                continue
            victims.append((session, raw))
        victims = [(s, raw) for s, raw in victims if s in doomed]
        for chunk in _batches(victims, UNLINK_BATCH):
            pipe = client.pipeline(transaction=False)
            for _, raw in chunk:
                pipe.unlink(raw)
            for (session, _), n in zip(chunk, pipe.execute()):
                sessions[session].deleted += int(n)
                removed += int(n)
        if not doomed:
            break
    return removed


def collect_orphans(client, sessions: dict, orphan_grace_s: float) -> int:
    """UNLINK the orphan chunks found by ``survey`` in sessions that are kept, each checked
    again first (its manifest still missing, its idle time still long enough)."""
    removed = 0
    for info in sessions.values():
        if info.verdict == DELETE:
            continue  # the whole session goes
        for chunk in _batches(info.orphans, UNLINK_BATCH):
            pipe = client.pipeline(transaction=False)
            for raw in chunk:
                pipe.exists(K.manifest_key(K.chunk_base(_decode(raw))))
                pipe.object("IDLETIME", raw)
            replies = pipe.execute(raise_on_error=False)
            still = [raw for raw, has_manifest, idle in zip(chunk, replies[::2], replies[1::2])
                     if has_manifest == 0 and isinstance(idle, int) and idle >= orphan_grace_s]
            if still:
                pipe = client.pipeline(transaction=False)
                for raw in still:
                    pipe.unlink(raw)
                n = sum(int(r) for r in pipe.execute())
                info.orphans_deleted += n
                removed += n
    return removed


def _fresh_beat_each(client, hb_keys, grace_s: float) -> bool:
    # one GET per key: cross-slot safe in cluster mode (MGET is not)
    now = time.time()
    for key in hb_keys:
        beat = _beat_time(client.get(key))
        if beat is not None and now - beat < grace_s:
            return True
    return False


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _size(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def report(sessions: dict, now: float) -> list[dict]:
    """One row per session, sorted by name, as printed and written to JSON."""
    out = []
    for name in sorted(sessions):
        info = sessions[name]
        last = info.last_beat
        out.append({
            "session": name, "nodes": len(info.nodes), "keys": info.keys,
            "bytes": info.est_bytes, "bytes_sampled_keys": info.sampled_keys,
            "last_beat_age_s": None if last is None else round(now - last, 1),
            "min_key_idle_s": info.min_idle_s, "verdict": info.verdict,
            "deleted_keys": info.deleted, "orphan_chunks": len(info.orphans),
            "orphan_chunks_deleted": info.orphans_deleted,
        })
    return out


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ray-valkey-spill gc``."""
    p = argparse.ArgumentParser(
        prog="ray-valkey-spill gc",
        description="Find (and with --yes remove) spilled keys whose Ray session is gone. "
                    "A session is live while any of its nodes' heartbeats is younger than "
                    "--grace-s; its keys, including those of its dead nodes, are kept.")
    add_connection_options(p, prefix_help="spill key prefix (default: ray:)")
    p.add_argument("--grace-s", type=float, default=DEFAULT_GRACE_S,
                   help=f"a session whose newest heartbeat (and, without heartbeats, newest key "
                        f"use) is older than this is gone (default {DEFAULT_GRACE_S:.0f})")
    p.add_argument("--allow-short-grace", action="store_true",
                   help=f"accept --grace-s below {MIN_SAFE_GRACE_S:.0f} s (3 heartbeat "
                        "intervals); for tests only: a live session could be taken for dead")
    p.add_argument("--yes", action="store_true",
                   help="delete the keys of gone sessions (without it gc only reports)")
    p.add_argument("--orphan-grace-s", type=float, default=DEFAULT_ORPHAN_GRACE_S,
                   help="collect chunk keys without a manifest (a spill killed half-way) idle "
                        f"this long, also in live sessions (default {DEFAULT_ORPHAN_GRACE_S:.0f}; "
                        "at least --grace-s)")
    p.add_argument("--ray-address", action="append", default=[], metavar="HOST:PORT",
                   help="GCS address of a running Ray cluster (repeatable): its current "
                        "session is kept whatever its heartbeats say; gc stops if it cannot "
                        "be asked")
    p.add_argument("--sample-keys", type=int, default=DEFAULT_SAMPLE_KEYS,
                   help="MEMORY USAGE samples per session for the byte estimate")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    """Check the arguments and run gc; 0 on success, ``EXIT_USAGE`` for a bad argument or server."""
    args = build_parser().parse_args(argv)
    try:
        if not (args.grace_s >= 0 and args.grace_s == args.grace_s and args.grace_s < float("inf")):
            raise ConfigError("--grace-s", args.grace_s, "a non-negative number of seconds")
        if args.grace_s < MIN_SAFE_GRACE_S and not args.allow_short_grace:
            raise ConfigError("--grace-s", args.grace_s,
                              f"at least {MIN_SAFE_GRACE_S:.0f} (3 heartbeat intervals of "
                              f"{HEARTBEAT_INTERVAL_S:.0f} s), or pass --allow-short-grace")
        if not (args.orphan_grace_s >= args.grace_s and args.orphan_grace_s < float("inf")):
            raise ConfigError("--orphan-grace-s", args.orphan_grace_s,
                              f"a number of seconds of at least --grace-s ({args.grace_s:g})")
        if args.sample_keys < 1:
            raise ConfigError("--sample-keys", args.sample_keys, "a positive integer")
        config = config_from_args(args)
        return run(config, args)
    except RayValkeySpillError as exc:
        return fail("gc", exc)


def run(config: SpillConfig, args) -> int:
    """Survey the prefix, judge every session, delete the gone ones with ``--yes`` and print the
    report; raises ``BackendUnavailableError`` when the server fails."""
    import valkey

    from ..connection import connect
    from .ray_sessions import live_session

    running = {live_session(address): address for address in args.ray_address}
    client = connect(config)
    where = config.address.display()
    progress = not args.quiet
    try:
        sessions, foreign = survey(client, config.prefix, args.sample_keys, progress,
                                   orphan_grace_s=args.orphan_grace_s)
        now = time.time()
        for info in sessions.values():
            info.verdict = (KEEP_RUNNING.format(running[info.name]) if info.name in running
                            else info.judge(now, args.grace_s))
        removed = collect(client, config.prefix, sessions, args.grace_s, progress) \
            if args.yes else 0
        orphans_removed = collect_orphans(client, sessions, args.orphan_grace_s) \
            if args.yes else 0
    except valkey.exceptions.ValkeyError as exc:
        raise BackendUnavailableError(f"gc on {where} failed: {exc}") from exc
    rows = report(sessions, now)
    doomed = [r for r in rows if r["verdict"] == DELETE]
    summary = {
        "server": where, "prefix": config.prefix, "grace_s": args.grace_s,
        "mode": "delete" if args.yes else "dry-run", "sessions": rows,
        "sessions_to_delete": len(doomed),
        "keys_to_delete": sum(r["keys"] for r in doomed),
        "bytes_to_delete": sum(r["bytes"] for r in doomed),
        "keys_deleted": removed, "foreign_keys_ignored": foreign,
        "orphan_chunks": sum(r["orphan_chunks"] for r in rows if r["verdict"] != DELETE),
        "orphan_chunks_deleted": orphans_removed,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    table = [[r["session"], r["nodes"], r["keys"], "~" + _size(r["bytes"]),
              _age(r["last_beat_age_s"]), _age(r["min_key_idle_s"]),
              "-" if r["verdict"] == DELETE else r["orphan_chunks"],
              r["verdict"] + (f" ({r['deleted_keys']} removed)" if args.yes and
                              r["verdict"] == DELETE else "")] for r in rows]
    print(f"spilled keys under {config.prefix!r} on {where} (grace {args.grace_s:.0f}s)")
    if table:
        print(render_table(table, ["session", "nodes", "keys", "bytes", "last beat",
                                   "newest key use", "orphan chunks", "verdict"]))
    else:
        print("no spilled keys found")
    if foreign:
        print(f"{foreign} keys under {config.prefix!r} do not have this backend's key shape; "
              "left alone")
    if summary["orphan_chunks"]:
        verb = "deleted" if args.yes else "would delete"
        print(f"{verb} {orphans_removed if args.yes else summary['orphan_chunks']} orphan chunks "
              f"(no manifest, idle >= {args.orphan_grace_s:.0f}s) of kept sessions")
    if args.yes:
        print(f"deleted {removed} keys of {len(doomed)} gone sessions")
    elif doomed:
        print(f"would delete {summary['keys_to_delete']} keys (~{_size(summary['bytes_to_delete'])})"
              f" of {len(doomed)} gone sessions; run again with --yes to delete them")
    else:
        print("nothing to delete")
    return 0
