"""eval.md: the protocol of `selfsup eval` in words (budgets, tuning grids, fine-tuning starts, the linear
probes' convergence, the layer probed), above the results table of format_markdown."""
from __future__ import annotations

from .layers import SELECT_SAMPLES
from .report import format_markdown
from .tuning import MAX_EXTEND


def _starts(starts: dict) -> str:
    return "; ".join(f"{row} from {'its linear probe (LP-FT)' if v['probe'] else 'a fresh head'}, "
                     f"{v.get('optimizer', 'sgd')} lr {v['lr']:g}" for row, v in starts.items())


def markdown_report(result: dict) -> str:
    """The whole of eval.md for an `evaluate` result: the protocol's paragraph, then the table."""
    cap = f", at most {result['finetune_max_steps']} steps" if result["finetune_max_steps"] else ""
    head = (f"**{result['method']}** ({result['backbone']}, {result['pretrain_epochs']} epochs) on {result['data']}: "
            f"train {result['splits']['train']}, test {result['splits']['test']} ({result['test_split']}); "
            f"device {result['device']}.\nkNN: cosine, T={result['temperature']}; k=200 is the literature's fixed "
            f"protocol (capped at the smallest class); tuned k from {result['knn_ks']} and the linear probe's L2 "
            f"from {result['l2_grid']} (extended a decade at a time, at most {MAX_EXTEND}, past an edge that wins) "
            f"are chosen on {result['validation']}, the same rule for every row. "
            f"Fine-tuning: {result['finetune_epochs']} epochs, at least {result['finetune_min_steps']} steps{cap}; "
            f"{_starts(result['finetune_start'])}, "
            + ("each the start that validated better for it." if all(v.get("validated", True) for v in
                                                                     result["finetune_start"].values())
               else "common settings, not validated on this data."))
    head += _probe_line(result) + _layer_line(result)
    return head + "\n\n" + format_markdown(result)


def _probe_line(result: dict) -> str:
    """The report's note on the linear probes' refits: each starts from its validated solution; converged?"""
    fits = [r for r in result["results"] if r.get("linear_converged") is not None]
    if not fits:
        return ""
    stuck = [f"{r['features']} at {100 * r['fraction']:g}%" for r in fits if not r["linear_converged"]]
    most = max(r["linear_iterations"] for r in fits)
    state = f"NOT converged for {', '.join(stuck)}" if stuck else "all converged"
    return (f"\nLinear probe: each refit on the whole labelled subset starts from the probe that validated at the "
            f"chosen L2 and runs L-BFGS to convergence (largest gradient component <= 1e-4): {state} "
            f"(at most {most} iterations).")


def _layer_line(result: dict) -> str:
    """The report's note on the layer probed; nothing for the default (the table reads as it always did)."""
    if result.get("layer_per_fraction"):
        parts = []
        for r in result["results"]:
            c = r.get("layer_choice")
            if c:
                scores = ", ".join(f"{n} {100 * v:.1f}" for n, v in c["scores"].items())
                why = f"{scores}; {c['validation']} of {c['samples']}" if scores else \
                    "too few labels a class to validate: the default"
                parts.append(f"{r['features']} at {100 * r['fraction']:g}%: {r['layer']} ({why})")
        by = result["layer_choice"]["by"]
        return (f"\nLayer (best): chosen for each label fraction and encoder as the layer whose {by} probe "
                f"validated best on that fraction's own labelled subset (at most {SELECT_SAMPLES:,} of it; its "
                f"seeded, class-balanced 20% validates; never the test split); validation accuracy by layer: "
                + "; ".join(parts) + ".")
    return "" if result.get("layer", "pooled") == "pooled" else f"\nLayer: {result['layer']} (both encoders)."
