"""Benchmark: when does text pretraining pay off? Accuracy at 10% (and 1%) labels against pretraining minutes.

For each method (MLM, SimCSE) and each budget of pretraining minutes, one run through the real API
(`selfsup.pretrain` then `selfsup.evaluate`, every default of the method's recipe), evaluated on the labelled
source at the label fractions: kNN, the linear probe and fine-tuning (LP-FT), each tuned by the validation
rule every row shares. Beside them the flat lines that do not depend on pretraining: the random-init encoder
(supervised training from scratch when fine-tuned) and TF-IDF + logistic regression.

`selfsup pretrain` takes steps, not minutes, so a budget of M minutes is turned into steps the way
`selfsup bench --minutes` does it: 20 steps of a scratch run are timed per method, and the run trains
floor(M * 60 / seconds per step) steps with its learning-rate schedule spanning exactly those. Both the
requested minutes and the training seconds the run then measured are recorded (a loaded machine runs slower
than it timed). Each budget is its own run (its own schedule), not a checkpoint of a longer one.

    python benchmarks/text_curve.py                           # fortunes, 2,5,10,20,40 minutes, MLM and SimCSE
    python benchmarks/text_curve.py --minutes 0.5,1 --threads 1 --out runs/tc-small --png /tmp/tc.png
    python benchmarks/text_curve.py --pretrain-data fortunes --pretrain-data /usr/share/games/fortunes/...

Prints one JSON object; writes the chart (PNG: title, axes, legend) and a markdown table. Rerunning with the
same --out reuses finished runs and their evaluations.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

from selfsup import Config, evaluate, pretrain
from selfsup.bench.run import TIMING_STEPS, _time_steps
from selfsup.evaluate.report import RANDOM_ROW
from selfsup.evaluate.tfidf import TFIDF_ROW
from selfsup.rundir import RunPaths
from selfsup.train.logging import read_jsonl

KEYS = ("knn_tuned", "knn_k", "linear", "linear_l2", "finetune")
SHOW = {"linear": "linear", "finetune": "fine-tune"}  # the chart's protocols; the table has kNN as well


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", default="2,5,10,20,40", help="pretraining budgets in minutes, comma-separated")
    p.add_argument("--methods", default="mlm,simcse", help="text methods to pretrain, comma-separated")
    p.add_argument("--data", default="fortunes", help="the labelled source evaluated on (default fortunes)")
    p.add_argument("--pretrain-data", action="append", default=None,
                   help="an unlabelled pretraining source (repeatable; default: --data itself). Several need "
                        "`selfsup pretrain` to take several --data sources")
    p.add_argument("--fractions", default="0.1,0.01", help="label fractions evaluated (default 0.1,0.01)")
    p.add_argument("--finetune-max-steps", type=int, default=None, help="cap on fine-tuning steps per job")
    p.add_argument("--backbone", default=None, help="the text backbone (default: the methods' recipe)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (pretraining and evaluation)")
    p.add_argument("--device", default="auto", help="cpu, cuda ... (default: cuda if present)")
    p.add_argument("--seed", type=int, default=0, help="seed of pretraining, label subsets and probes")
    p.add_argument("--out", default="runs/text_curve", help="folder of the runs and curve.json")
    p.add_argument("--png", default="docs/text_curve.png", help="where the chart goes")
    p.add_argument("--md", default=None, help="where the markdown table goes (default: OUT/text_curve.md)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def numbers(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def pretrain_source(args) -> str | list[str]:
    sources = args.pretrain_data or [args.data]
    return sources[0] if len(sources) == 1 else sources


def run_budget(args, method: str, minutes: float, step_s: float, progress: bool) -> dict:
    """Pretrain `method` for the steps that fit `minutes` (reused when done); its measured times."""
    steps = max(1, math.floor(minutes * 60 / step_s))
    run = Path(args.out) / f"{method}-{minutes:g}min"
    if not RunPaths(run).last.exists():
        pretrain(Config(method=method, data=pretrain_source(args), out=str(run), steps=steps, knn_every=0,
                        backbone=args.backbone, threads=args.threads, device=args.device, seed=args.seed),
                 progress=progress)
    records = [r for r in read_jsonl(RunPaths(run).metrics) if r.get("event") == "epoch"]
    return dict(method=method, minutes=minutes, steps=records[-1]["step"], run=str(run),
                train_s=round(sum(r["seconds"] for r in records), 1), final_loss=records[-1]["loss"])


def evaluate_run(args, run: str, fractions: list[float], baselines: bool, progress: bool) -> dict:
    """{row: {fraction: {knn_tuned, linear, finetune, ...}}} of one run (reused from its eval.json)."""
    eval_file = Path(run) / "eval.json"
    ours = f"{Config.load(RunPaths(Path(run)).config).method} (ours)"
    rows_wanted = {ours, RANDOM_ROW, TFIDF_ROW} if baselines else {ours}
    result = json.loads(eval_file.read_text()) if eval_file.exists() else None
    if result is None or not rows_wanted <= {r["features"] for r in result["results"]} \
            or sorted({r["fraction"] for r in result["results"]}) != sorted(fractions):
        own = args.pretrain_data is None or args.pretrain_data == [args.data]
        result = evaluate(run, data=None if own else args.data, fractions=tuple(fractions),
                          baselines=baselines, finetune_max_steps=args.finetune_max_steps, device=args.device,
                          seed=args.seed, progress=progress)
    out: dict = {}
    for r in result["results"]:
        out.setdefault(r["features"], {})[str(r["fraction"])] = {k: r.get(k) for k in KEYS}
    return dict(rows=out, splits=result["splits"], test_split=result.get("test_split"),
                finetune_start=result.get("finetune_start"))


def pct(v) -> str:
    return "—" if v is None else f"{100 * v:.1f}"


def markdown(state: dict) -> str:
    fr = state["fractions"]
    cols = [(f, k) for f in fr for k in ("knn_tuned", "linear", "finetune")]
    names = {"knn_tuned": "kNN", "linear": "linear", "finetune": "fine-tune"}
    head = "| features | minutes (trained s) | steps | " + " | ".join(
        f"{100 * f:g}% {names[k]}" for f, k in cols) + " |"
    cap = state.get("finetune_max_steps")
    note = (f"Pretrained on {', '.join(state['pretrain_data'])}, evaluated on {state['data']} "
            f"({state.get('test_split')}); "
            f"budget: {state['budget']} (seconds per step: "
            + ", ".join(f"{m} {t['step_s']:.3f}" for m, t in state["timing"].items())
            + "); kNN and linear tuned on each fraction's validation split; fine-tuning: ours LP-FT, random init from "
            "scratch"
            + (f", at most {cap} steps" if cap else "") + ".\n\n")
    lines = [note + head, "|---|---:|---:|" + "---:|" * len(cols)]
    for row, res in state["baselines"].items():
        lines.append(f"| {row} | — | — | " + " | ".join(pct(res.get(str(f), {}).get(k)) for f, k in cols) + " |")
    for p in state["points"]:
        res = p["eval"]
        lines.append(f"| {p['method']} | {p['minutes']:g} ({p['train_s']:.0f}) | {p['steps']} | "
                     + " | ".join(pct(res.get(str(f), {}).get(k)) for f, k in cols) + " |")
    return "\n".join(lines) + "\n"


def chart(state: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fr = state["fractions"]
    fig, axes = plt.subplots(1, len(fr), figsize=(6.5 * len(fr), 4.6), squeeze=False)
    colors = {"mlm": "tab:blue", "simcse": "tab:orange"}
    for ax, f in zip(axes[0], fr):
        for method in dict.fromkeys(p["method"] for p in state["points"]):
            pts = sorted((p for p in state["points"] if p["method"] == method), key=lambda p: p["minutes"])
            for key, style in (("finetune", "-o"), ("linear", "--s")):
                ys = [p["eval"].get(str(f), {}).get(key) for p in pts]
                if any(y is not None for y in ys):
                    ax.plot([p["minutes"] for p in pts], [100 * y if y is not None else math.nan for y in ys],
                            style, color=colors.get(method), label=f"{method} {SHOW[key]}")
        flat = ((RANDOM_ROW, "finetune", "black", "-"), (RANDOM_ROW, "linear", "gray", "--"),
                (TFIDF_ROW, "linear", "tab:green", ":"))
        for row, key, color, ls in flat:
            v = state["baselines"].get(row, {}).get(str(f), {}).get(key)
            if v is not None:
                ax.axhline(100 * v, color=color, ls=ls, label=f"{row} {SHOW[key]}"
                           + (" (logistic regression)" if row == TFIDF_ROW else ""))
        ax.set_xscale("log")
        ax.set_xticks(state["minutes"], [f"{m:g}" for m in state["minutes"]])
        ax.minorticks_off()
        ax.set_xlabel("pretraining minutes (requested; log scale)")
        ax.set_ylabel(f"test accuracy (%) with {100 * f:g}% of the labels")
        ax.set_title(f"{state['data']}: {100 * f:g}% labels")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle("Text pretraining against the clock: MLM and SimCSE vs. random init and TF-IDF")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    args = parse(argv)
    minutes, fractions = numbers(args.minutes), numbers(args.fractions)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    progress = not args.no_progress
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    state_file = out / "curve.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    state.update(data=args.data, pretrain_data=args.pretrain_data or [args.data], fractions=fractions,
                 finetune_max_steps=args.finetune_max_steps, backbone=args.backbone,
                 minutes=minutes, methods=methods, threads=args.threads, device=args.device, seed=args.seed,
                 budget=f"{TIMING_STEPS} steps of a scratch run timed per method, then floor(minutes * 60 / "
                        "seconds per step) steps")
    state.setdefault("timing", {})
    state.setdefault("baselines", {})
    t0 = time.perf_counter()
    points = []
    for method in methods:
        if method not in state["timing"]:
            base = Config(method=method, data=pretrain_source(args), backbone=args.backbone, knn_every=0,
                          threads=args.threads, device=args.device, seed=args.seed)
            state["timing"][method] = _time_steps(base, out / f".{method}-timing", progress)
            state_file.write_text(json.dumps(state, indent=2))
        step_s = state["timing"][method]["step_s"]
        for m in minutes:
            print(f"text_curve: {method}, {m:g} min ({step_s:.3f} s/step)", file=sys.stderr, flush=True)
            point = run_budget(args, method, m, step_s, progress)
            need_baselines = not state["baselines"]
            ev = evaluate_run(args, point["run"], fractions, need_baselines, progress)
            point["eval"] = ev["rows"][f"{method} (ours)"]
            if need_baselines:  # they depend on the labelled data and the tokenizer only, not on pretraining
                state["baselines"] = {row: res for row, res in ev["rows"].items() if not row.endswith("(ours)")}
                state.update(splits=ev["splits"], test_split=ev["test_split"], baselines_from=point["run"])
            points.append(point)
            state["points"] = points
            state_file.write_text(json.dumps(state, indent=2))
    state["wall_s"] = round(time.perf_counter() - t0, 1)
    md = markdown(state)
    md_path = Path(args.md) if args.md else out / "text_curve.md"
    md_path.write_text(md)
    chart(state, Path(args.png))
    state.update(markdown_file=str(md_path), png=args.png)
    state_file.write_text(json.dumps(state, indent=2))
    print(json.dumps(state, indent=2))
    return state


if __name__ == "__main__":
    main()
