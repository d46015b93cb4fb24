"""Run-directory outputs: metrics as JSON lines and curves as PNG."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path


def append_jsonl(path: Path, record: dict) -> None:
    """Append one JSON record as a line (flushed at once so a crash keeps what was logged)."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    """All records of a JSON-lines file (empty when missing)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_epochs(path: Path, last_epoch: int) -> None:
    """Drop records of epochs after `last_epoch` (a resumed run redoes them); rewritten atomically."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    keep = [ln for ln in lines
            if not ln.strip() or json.loads(ln).get("event") != "epoch" or json.loads(ln)["epoch"] <= last_epoch]
    if len(keep) != len(lines):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(keep))
        os.replace(tmp, path)


def knn_title(records: list[dict]) -> str:
    """The kNN plot's title, with the bank and query sizes of the last epoch that ran the monitor.

    Not simply the latest epoch's: with --knn-every N most epochs have no kNN record.
    """
    last = next((r for r in reversed(records) if r.get("knn") is not None), {})
    return (f"Online kNN (k={last.get('knn_k', 200)}, T=0.1)\n"
            f"bank {last.get('knn_bank', '?')}, queries {last.get('knn_queries', '?')}")


def panel_values(record: dict) -> dict[str, float]:
    """The panels of logs.png in one epoch record: the method's logs, then the collapse monitor's std and rank."""
    collapse = record.get("collapse", {})
    return {**record.get("logs", {}), **{f"collapse {k}": collapse[k] for k in ("std_mean", "rank") if k in collapse}}


def plot_curves(metrics_path: Path, plots_dir: Path) -> list[Path]:
    """Write loss.png, knn.png (when kNN was monitored) and logs.png (the method's own logs and the collapse
    monitor's std_mean and rank, one panel each)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    recs = [r for r in read_jsonl(metrics_path) if r.get("event") == "epoch"]
    if not recs:
        return []
    plots_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def save(fig, name: str) -> None:
        fig.tight_layout()
        fig.savefig(plots_dir / name, dpi=100)
        plt.close(fig)
        written.append(plots_dir / name)

    def panel(ax, xs, ys, ylabel: str, title: str, color: str) -> None:
        ax.plot(xs, ys, marker="o", color=color)
        ax.set(xlabel="epoch", ylabel=ylabel, title=title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)

    fig, ax = plt.subplots(figsize=(6, 4))
    panel(ax, [r["epoch"] for r in recs], [r["loss"] for r in recs], "training loss", "Pretraining loss", "tab:blue")
    save(fig, "loss.png")
    knn = [r for r in recs if r.get("knn") is not None and not math.isnan(r["knn"])]
    if knn:
        fig, ax = plt.subplots(figsize=(6, 4))
        panel(ax, [r["epoch"] for r in knn], [100 * r["knn"] for r in knn], "kNN accuracy (%)", knn_title(recs),
              "tab:green")
        save(fig, "knn.png")
    values = [panel_values(r) for r in recs]
    names = list(dict.fromkeys(k for v in values for k in v))
    if names:
        fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.5), squeeze=False)
        for ax, name in zip(axes[0], names):
            have = [(r["epoch"], v[name]) for r, v in zip(recs, values) if name in v]
            panel(ax, [e for e, _ in have], [y for _, y in have], name, name,
                  "tab:red" if name.startswith("collapse") else "tab:purple")
        fig.suptitle("Method logs (epoch means) and the collapse monitor (end of epoch)")
        save(fig, "logs.png")
    return written
