"""``scenarios plot``: every scenario's results file drawn into one picture."""

from __future__ import annotations

import json
from pathlib import Path

def plot(json_dir: Path, out: Path) -> None:
    """One picture of every scenarios_*.json in ``json_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    found = {p.stem.removeprefix("scenarios_"): json.loads(p.read_text())
             for p in sorted(json_dir.glob("scenarios_*.json"))}
    panels = [name for name in ("cross-node", "lost-node", "deployed", "same-node") if name in found]
    if not panels:
        raise SystemExit(f"no scenarios_*.json in {json_dir}")
    rows = (len(panels) + 1) // 2
    fig, axes = plt.subplots(rows, 2, figsize=(13, 4.8 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, panels):
        med = found[name]["summary"]["medians"]
        if name == "cross-node":
            kinds = found[name]["config"]["kinds"]
            labels = list(med)
            width = 0.8 / len(labels)
            for j, label in enumerate(labels):
                xs = [i + j * width for i in range(len(kinds))]
                ax.bar(xs, [med[label].get(f"{k}/seq_gibps", 0) for k in kinds], width,
                       label=label)
            ax.set_xticks([i + width * (len(labels) - 1) / 2 for i in range(len(kinds))], kinds)
            ax.set_ylabel("GiB/s read on node B (1 object per get)")
            ax.set_title("a. spilled on A, consumed on B")
        elif name == "lost-node":
            labels = list(med)
            ax.barh(labels, [med[lb].get("all_back_s", 0) for lb in labels],
                    color=["tab:blue" if lb.startswith("valkey") else "tab:orange" for lb in labels])
            for i, lb in enumerate(labels):
                ax.text(med[lb].get("all_back_s", 0), i, f"  {med[lb].get('recovered', 0):.0f} back,"
                        f" {med[lb].get('lost', 0):.0f} lost", va="center", fontsize=8)
            ax.set_xlim(0, 1.4 * max(med[lb].get("all_back_s", 0) for lb in labels))
            ax.set_xlabel("s from crash until all that came back is on B")
            ax.set_title("b. node A crashes")
            continue
        else:
            labels = [lb for lb in med if "spill_gibps" in med[lb]]
            short = [lb.replace("valkey deployed: ", "").replace(" (max_io_workers)", "")
                     .replace("(defaults: 4 MiB chunks, 4 connections)", "(defaults)")[:40]
                     for lb in labels]
            ys = range(len(labels))
            ax.barh([y + 0.2 for y in ys], [med[lb].get("spill_gibps", 0) for lb in labels], 0.4,
                    label="spill")
            ax.barh([y - 0.2 for y in ys], [med[lb].get("restore_gibps", 0) for lb in labels], 0.4,
                    label="restore in order")
            ax.set_yticks(list(ys), short, fontsize=7)
            ax.set_xlabel("GiB/s (same node)")
            raw = [m["raw_get_gibps"] for m in med.values() if "raw_get_gibps" in m]
            ax.set_title("c. deployed valkey.conf" if name == "deployed" else
                         "d. same-node levers" + (f" (raw socket GET: {raw[0]:.2f} GiB/s)"
                                                  if raw else ""))
        ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
