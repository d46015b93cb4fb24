"""The bench's outputs: one Markdown table (OUT/bench.md) and one bar chart (OUT/bench.png) from bench.json."""
from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

PIXELS, RANDOM = "raw pixels", "random init"
# column -> (label fraction: "all", "low" or "finetune"; result key)
METRICS = {"kNN": ("all", "knn_tuned"), "linear": ("all", "linear"), "linear 1%": ("low", "linear"),
           "fine-tune": ("finetune", "finetune")}


def hardware(device: str) -> str:
    """The machine in words: CPU model and threads, or the GPU's name."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(torch.device(device))} (CUDA)"
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, torch {torch.get_num_threads()} threads"


def _row(results: list[dict], name: str, fraction: float) -> dict | None:
    return next((r for r in results if r["features"] == name and r["fraction"] == fraction), None)


def _values(results: list[dict], name: str, ff: float) -> dict:
    """Column -> accuracy in % (None where the protocol does not apply) for one row of the evaluation."""
    fractions = {"all": 1.0, "low": 0.01, "finetune": ff}
    out = {}
    for col, (which, key) in METRICS.items():
        r = _row(results, name, fractions[which])
        out[col] = None if r is None or r.get(key) is None else 100 * r[key]
    return out


def table_rows(state: dict) -> list[dict]:
    """The table's rows: each evaluated method, then one random-init row per backbone (one per distinct
    result where methods' encoders differ, e.g. a 1-channel input), then the raw pixels."""
    ff = state["protocol"]["finetune_fraction"]
    rows, randoms, pixels = [], {}, None
    for name in state.get("order", state["methods"]):
        entry = state["methods"].get(name, {})
        ev = entry.get("eval")
        if ev is None:
            continue
        res = ev["results"]
        rows.append(dict(name=name, backbone=ev["backbone"], layer=ev.get("layer", "pooled"),
                         epochs=ev["pretrain_epochs"], epoch_s=entry.get("epoch_s"), peak_mib=entry.get("peak_mib"),
                         train_s=entry.get("train_s"), **_values(res, f"{name} (ours)", ff)))
        rand = dict(name=f"{RANDOM} ({ev['backbone']})", backbone=ev["backbone"], layer=ev.get("random_layer", "pooled"),
                    epochs=0, **_values(res, RANDOM, ff))
        key = (ev["backbone"], rand["layer"], tuple(round(rand[c] or 0, 1) for c in METRICS))
        randoms.setdefault(key, (rand, []))[1].append(name)
        if pixels is None and _row(res, PIXELS, 1.0) is not None:
            pixels = dict(name=PIXELS, backbone="—", layer="—", epochs=None, **_values(res, PIXELS, ff))
    by_backbone: dict[str, int] = {}
    for rand, _ in randoms.values():
        by_backbone[rand["backbone"]] = by_backbone.get(rand["backbone"], 0) + 1
    for rand, users in randoms.values():
        if by_backbone[rand["backbone"]] > 1:
            rand["name"] = f"{RANDOM} ({rand['backbone']}, as in {', '.join(users)})"
        rows.append(rand)
    return rows + ([pixels] if pixels else [])


def _fmt(v, spec: str = ".1f", bold: bool = False) -> str:
    if v is None:
        return "—"
    text = format(v, spec)
    return f"**{text}**" if bold else text


def format_table(state: dict) -> str:
    """Markdown: accuracy columns (best in bold) beside seconds per epoch, peak memory and training seconds."""
    rows = table_rows(state)
    ff = state["protocol"]["finetune_fraction"]
    heads = {"kNN": "kNN 100%", "linear": "linear 100%", "linear 1%": "linear 1%", "fine-tune": f"fine-tune {ff:.0%}"}
    best = {c: max((round(r[c], 1) for r in rows if r[c] is not None), default=None) for c in METRICS}
    lines = ["| method | backbone | layer | epochs | " + " | ".join(heads.values()) + " | s/epoch | peak MiB | train s |",
             "|---|---|---|---:|" + "---:|" * (len(METRICS) + 3)]
    for r in rows:
        acc = " | ".join(_fmt(r[c], bold=r[c] is not None and round(r[c], 1) == best[c]) for c in METRICS)
        epochs = "—" if r["epochs"] is None else str(r["epochs"])
        lines.append(f"| {r['name']} | {r['backbone']} | {r['layer']} | {epochs} | {acc} | "
                     f"{_fmt(r.get('epoch_s'))} | {_fmt(r.get('peak_mib'), '.0f')} | {_fmt(r.get('train_s'), '.0f')} |")
    return "\n".join(lines) + "\n"


def describe(state: dict) -> str:
    """The protocol above the table: data, budget, layer rule, evaluation, hardware, wall time."""
    p = state["protocol"]
    evals = [e["eval"] for e in state["methods"].values() if "eval" in e]
    split = (f"train {evals[0]['splits']['train']}, test {evals[0]['splits']['test']} ({evals[0]['test_split']})"
             if evals else "")
    layer = ("each encoder at the layer whose linear probe validated best on a seeded, class-balanced 20% split of "
             "(at most 10,000 of) the training labels, never the test split" if p["layer"] == "best"
             else f"every encoder at layer {p['layer']}")
    ft = (f"fine-tuning with {p['finetune_fraction']:.0%} of the labels for "
          f"{evals[0]['finetune_epochs'] if evals else p['finetune_epochs']} epochs"
          + (f", at least {evals[0]['finetune_min_steps']} steps" if evals else "")
          + (f", at most {p['finetune_max_steps']}" if p["finetune_max_steps"] else ""))
    skipped = [f"{n}: {e['skipped']}" for n, e in state["methods"].items() if e.get("skipped")]
    text = (f"**selfsup bench** on {p['data']}: {split}; seed {p['seed']}.\n"
            f"Budget: {p['budget']}. Layer: {layer}. kNN (cosine, T=0.1, k tuned on the same kind of split) and "
            f"the L2-tuned linear probe with 100% and 1% of the labels; {ft}.\n"
            f"Hardware: {hardware(p['device'])}; device {p['device']}; bench wall time {state.get('wall_s', 0):.0f} s "
            "(all invocations). s/epoch: median training seconds per epoch; peak MiB: "
            f"{_peak_note(state)}; train s: total training seconds.")
    return text + ("\nSkipped: " + "; ".join(skipped) if skipped else "")


def _peak_note(state: dict) -> str:
    what = next((e.get("peak_what") for e in state["methods"].values() if e.get("peak_what")), "")
    return what or "peak memory during pretraining"


def plot_bars(state: dict, path: Path) -> None:
    """Grouped bars: one group per row of the table, one bar per accuracy column."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = table_rows(state)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(rows) + 2), 4.0))
    width = 0.8 / len(METRICS)
    for i, col in enumerate(METRICS):
        vals = [r[col] if r[col] is not None else 0.0 for r in rows]
        ax.bar([j + (i - (len(METRICS) - 1) / 2) * width for j in range(len(rows))], vals, width, label=col)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r["name"] for r in rows], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, ncol=len(METRICS))
    ax.set_title(f"selfsup bench: {state['protocol']['data']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(state: dict, out: Path) -> str:
    """Write OUT/bench.md and OUT/bench.png; return the Markdown."""
    md = describe(state) + "\n\n" + format_table(state)
    (out / "bench.md").write_text(md)
    if table_rows(state):
        plot_bars(state, out / "bench.png")
    return md
