"""The bench's outputs: one Markdown table (OUT/bench.md) and one bar chart (OUT/bench.png) from bench.json."""
from __future__ import annotations

import os
import platform
import re
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


def columns(state: dict) -> list[str]:
    """The accuracy columns of this bench: every METRICS column, less fine-tuning when it was left out."""
    return [c for c in METRICS if not (c == "fine-tune" and state["protocol"].get("no_finetune"))]


def column_heads(state: dict) -> dict[str, str]:
    """Column -> its header, with the label fraction and, for fine-tuning, a step cap when one was given."""
    p = state["protocol"]
    cap = f" (≤{p['finetune_max_steps']} steps)" if p.get("finetune_max_steps") else ""
    heads = {"kNN": "kNN 100%", "linear": "linear 100%", "linear 1%": "linear 1%",
             "fine-tune": f"fine-tune {p['finetune_fraction']:.0%}{cap}"}
    return {c: heads[c] for c in columns(state)}


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


def _layer(results: list[dict], name: str, fallback: str) -> str:
    """The layer of a row at 100% of the labels, and the 1% row's when that fraction chose another one."""
    full, low = _row(results, name, 1.0), _row(results, name, 0.01)
    top = (full or {}).get("layer", fallback)
    other = (low or {}).get("layer", top)
    return top if other == top else f"{top} (1%: {other})"


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
        rows.append(dict(name=name, backbone=ev["backbone"],
                         layer=_layer(res, f"{name} (ours)", ev.get("layer", "pooled")),
                         epochs=ev["pretrain_epochs"], steps=entry.get("steps_done"), epoch_s=entry.get("epoch_s"),
                         peak_mib=entry.get("peak_mib"), train_s=entry.get("train_s"),
                         **_values(res, f"{name} (ours)", ff)))
        rand = dict(name=f"{RANDOM} ({ev['backbone']})", backbone=ev["backbone"],
                    layer=_layer(res, RANDOM, ev.get("random_layer", "pooled")),
                    epochs=0, baseline=True, **_values(res, RANDOM, ff))
        key = (ev["backbone"], rand["layer"], tuple(round(rand[c] or 0, 1) for c in METRICS))
        randoms.setdefault(key, (rand, []))[1].append(name)
        if pixels is None and _row(res, PIXELS, 1.0) is not None:
            pixels = dict(name=PIXELS, backbone="—", layer="—", epochs=None, baseline=True,
                          **_values(res, PIXELS, ff))
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
    heads = column_heads(state)
    best = {c: max((round(r[c], 1) for r in rows if r[c] is not None), default=None) for c in heads}
    lines = ["| method | backbone | layer | steps | epochs | " + " | ".join(heads.values())
             + " | s/epoch | peak MiB | train s |", "|---|---|---|---:|---:|" + "---:|" * (len(heads) + 3)]
    for r in rows:
        acc = " | ".join(_fmt(r[c], bold=r[c] is not None and round(r[c], 1) == best[c]) for c in heads)
        epochs = "—" if r["epochs"] is None else str(r["epochs"])
        steps = "—" if r.get("steps") is None else str(r["steps"])
        lines.append(f"| {r['name']} | {r['backbone']} | {r['layer']} | {steps} | {epochs} | {acc} | "
                     f"{_fmt(r.get('epoch_s'))} | {_fmt(r.get('peak_mib'), '.0f')} | {_fmt(r.get('train_s'), '.0f')} |")
    return "\n".join(lines) + "\n"


def describe(state: dict) -> str:
    """The protocol above the table: data, budget, layer rule, evaluation, hardware, wall time."""
    p = state["protocol"]
    evals = [e["eval"] for e in state["methods"].values() if "eval" in e]
    split = (f"train {evals[0]['splits']['train']}, test {evals[0]['splits']['test']} ({evals[0]['test_split']})"
             if evals else "")
    layer = ("each encoder, at each label fraction, at the layer whose linear probe validated best on a seeded, "
             "class-balanced 20% split of that fraction's labels (at most 10,000), never the test split"
             if p["layer"] == "best"
             else f"every encoder at layer {p['layer']}")
    ft = (f"fine-tuning with {p['finetune_fraction']:.0%} of the labels for "
          f"{evals[0]['finetune_epochs'] if evals else p['finetune_epochs']} epochs"
          + (f", at least {evals[0]['finetune_min_steps']} steps" if evals else "")
          + (f", at most {p['finetune_max_steps']} (a cap below `selfsup eval`'s budget: not eval's fine-tuning)"
             if p["finetune_max_steps"] else ""))
    if p.get("no_finetune"):
        ft = "no fine-tuning (--no-finetune)"
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


def chart_rows(state: dict) -> tuple[list[dict], list[dict]]:
    """The chart's rows: the methods sorted by linear accuracy with all labels (best first), and the baselines."""
    rows = table_rows(state)
    ours = sorted((r for r in rows if not r.get("baseline")), key=lambda r: -(r["linear"] or 0))
    return ours, [r for r in rows if r.get("baseline")]


def _axis_from(values: list[float]) -> float:
    """Where a panel's accuracy axis starts: a little below its lowest bar (rounded down to 5), not at 0, so that
    differences of a few points show; value labels give every bar's number."""
    lo, hi = min(values), max(values)
    return max(0.0, 5 * ((lo - max(2.0, 0.15 * (hi - lo))) // 5))


def plot_bars(state: dict, path: Path) -> None:
    """One panel per accuracy column, horizontal bars with their values: the methods sorted by linear accuracy
    (best on top), then the baselines (random init, raw pixels) hatched in grey below a line; each panel's axis
    starts a little below its lowest bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    ours, base = chart_rows(state)
    order = ours + base
    heads = column_heads(state)
    fig, axes = plt.subplots(1, len(heads), figsize=(3.2 * len(heads) + 2.2, 0.38 * len(order) + 1.6),
                             sharey=True, squeeze=False)
    ys = list(range(len(order)))[::-1]  # the first row on top
    for ax, (col, head) in zip(axes[0], heads.items()):
        vals = [r[col] for r in order]
        have = [v for v in vals if v is not None]
        if not have:
            continue
        lo = _axis_from(have)
        hi = min(100.0, max(have) + 0.12 * (max(have) - lo) + 1)
        for y, r, v in zip(ys, order, vals):
            if v is None:
                ax.text(lo, y, " —", va="center", fontsize=7, color="grey")
                continue
            baseline = r in base
            ax.barh(y, v - lo, left=lo, height=0.7, color="lightgrey" if baseline else "tab:blue",
                    hatch="///" if baseline else None, edgecolor="grey" if baseline else "tab:blue")
            ax.text(v, y, f" {v:.1f}", va="center", fontsize=7, zorder=3,
                    bbox=dict(facecolor="white", edgecolor="none", pad=0.3, alpha=0.8))
        if base and ours:
            ax.axhline(ys[len(ours)] + 0.5, color="black", linewidth=0.8)
        best_base = [v for r, v in zip(order, vals) if r in base and v is not None]
        if best_base:  # a method right of this line beats every baseline in the column
            ax.axvline(max(best_base), color="tab:red", linestyle="--", linewidth=1, zorder=2)
        ax.set_xlim(lo, hi + 0.1 * (hi - lo))
        ax.set_title(head, fontsize=9)
        ax.set_xlabel(f"test accuracy (%), axis from {lo:g}", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(ys)
    axes[0][0].set_yticklabels([r["name"] for r in order], fontsize=8)
    p = state["protocol"]
    fig.legend(handles=[Patch(color="tab:blue", label="pretrained (sorted by linear 100%)"),
                        Patch(facecolor="lightgrey", hatch="///", edgecolor="grey", label="baseline"),
                        Line2D([], [], color="tab:red", linestyle="--", label="best baseline of the column")],
               loc="lower center", ncol=3, fontsize=8, frameon=False)
    budget = re.split(r" \(|:", p["budget"])[0]
    fig.suptitle(f"selfsup bench on {Path(str(p['data'])).name}, {budget}: test accuracy (%)", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(state: dict, out: Path) -> str:
    """Write OUT/bench.md and OUT/bench.png; return the Markdown."""
    md = describe(state) + "\n\n" + format_table(state)
    (out / "bench.md").write_text(md)
    if table_rows(state):
        plot_bars(state, out / "bench.png")
    return md
