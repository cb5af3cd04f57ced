"""What every scenario shares: the labels, alternating runs and their medians and ratios, the
Markdown cells, and the filesystem baseline's throttled-disk target."""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from typing import Any, Callable

from ...config import MiB
from ..throttle import ThrottledDisk, ThrottleUnavailable, evict_from_page_cache

FS = "filesystem"
PREFAULTED = {"preallocate_plasma_memory": True}
FS_THROTTLED = "filesystem, throttled disk, cold cache"


def alternate(variants: list[tuple[str, Callable[[], dict]]], repeat: int) -> dict[str, list[dict]]:
    """Run every variant ``repeat`` times, alternating; each returns a flat dict of figures
    (and ``errors``)."""
    runs: dict[str, list[dict]] = {label: [] for label, _ in variants}
    for rep in range(repeat):
        for label, fn in variants:
            print(f"[{rep + 1}/{repeat}] {label}", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            figures = fn()
            figures["run_s"] = time.perf_counter() - t0
            runs[label].append(figures)
            for err in figures.get("errors", [])[:5]:
                print(f"  ERROR: {err}", file=sys.stderr)
    return runs


def is_number(v: Any) -> bool:
    """Whether ``v`` is a real number (not a bool, not NaN)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v


def summarize(runs: dict[str, list[dict]], baseline: dict[str, str]) -> dict[str, Any]:
    """Medians per label and figure; per label with a baseline (``baseline[label]``), the median
    of the per-repetition ratios label/baseline of every figure."""
    medians = {label: {k: statistics.median([r[k] for r in rs if is_number(r.get(k))])
                       for k in {k for r in rs for k in r if is_number(r.get(k))}}
               for label, rs in runs.items()}
    ratios: dict[str, dict[str, float]] = {}
    for label, base in baseline.items():
        if label not in runs or base not in runs:
            continue
        out = {}
        for k in medians[label]:
            per = [a[k] / b[k] for a, b in zip(runs[label], runs[base])
                   if is_number(a.get(k)) and is_number(b.get(k)) and b[k]]
            if per:
                out[k] = statistics.median(per)
        ratios[label] = out
    return {"medians": medians, "ratios": ratios, "baseline": baseline, "runs": runs}


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table."""
    def cell(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(v: float | None, fmt: str = "{:.2f}") -> str:
    """``v`` formatted, or "-" when it is not a number."""
    return fmt.format(v) if is_number(v) else "-"


def ratio_cell(summary: dict, label: str, key: str) -> str:
    """The bold median ratio of ``label`` to its baseline for ``key``, or ""."""
    r = summary["ratios"].get(label, {}).get(key)
    return f"**{r:.2f}x**" if is_number(r) else ""


def errors_of(runs: dict[str, list[dict]]) -> list[str]:
    """Every run's errors, each prefixed with its label."""
    return [f"{label}: {e}" for label, rs in runs.items() for r in rs for e in r.get("errors", [])]


# -- targets --------------------------------------------------------------------------------
def throttle_factory(args) -> tuple[Callable[[], Any] | None, str]:
    """A factory of the throttle context for the cold-disk row and its description, or
    (None, why not)."""
    if args.throttle_mibps <= 0:
        return None, "not asked for (--throttle-mibps 0)"
    rate = int(args.throttle_mibps * MiB)
    parent = args.baseline_dir or tempfile.gettempdir()
    try:
        probe = ThrottledDisk(parent, rate, rate)
    except ThrottleUnavailable as exc:
        return None, str(exc)
    return (lambda: ThrottledDisk(parent, rate, rate)), probe.description


def evict(spill_dir: str | None) -> None:
    """Drop the spill files under ``spill_dir`` from the page cache (cold reads)."""
    if spill_dir:
        evict_from_page_cache(spill_dir)


def flat(results: dict[str, Any]) -> dict:
    """Per-kind RunResults as one flat dict: ``<kind>/<figure>`` and ``errors``."""
    out: dict[str, Any] = {"errors": []}
    for kind, res in results.items():
        out.update({f"{kind}/{k}": v for k, v in res.figures.items()})
        out["errors"] += [f"{kind}: {e}" for e in res.errors]
    return out
