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
    return f"Online kNN (k=200, T=0.1)\nbank {last.get('knn_bank', '?')}, queries {last.get('knn_queries', '?')}"


def plot_curves(metrics_path: Path, plots_dir: Path) -> list[Path]:
    """Write loss.png (and knn.png when kNN was monitored) from the epoch records in metrics.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    recs = [r for r in read_jsonl(metrics_path) if r.get("event") == "epoch"]
    if not recs:
        return []
    plots_dir.mkdir(parents=True, exist_ok=True)

    def line_plot(xs, ys, ylabel: str, title: str, name: str, color: str) -> None:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(xs, ys, marker="o", color=color)
        ax.set(xlabel="epoch", ylabel=ylabel, title=title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(plots_dir / name, dpi=100)
        plt.close(fig)
        written.append(plots_dir / name)

    written: list[Path] = []
    line_plot([r["epoch"] for r in recs], [r["loss"] for r in recs], "training loss", "Pretraining loss",
              "loss.png", "tab:blue")
    knn = [r for r in recs if r.get("knn") is not None and not math.isnan(r["knn"])]
    if knn:
        line_plot([r["epoch"] for r in knn], [100 * r["knn"] for r in knn], "kNN accuracy (%)", knn_title(recs),
                  "knn.png", "tab:green")
    return written
