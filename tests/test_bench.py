"""`selfsup bench`: end to end on digits with two small methods, an interrupted run resumed, finished work
reused, a --minutes budget, and bad input refused before any training."""
import json
import math

import pytest
import torch

import selfsup
from selfsup import api
from selfsup.bench.report import _axis_from, chart_rows, table_rows, write_report
from selfsup.cli import main
from selfsup.errors import SelfSupError
from selfsup.train.logging import read_jsonl

FAST = dict(backbone="mlp", finetune_max_steps=5, device="cpu", threads=1, progress=False)


class Stop(Exception):
    """A crash in the middle of the second method's pretraining."""


def epochs_of(run) -> list[int]:
    return [r["epoch"] for r in read_jsonl(run / "metrics.jsonl") if r.get("event") == "epoch"]


def test_bench_end_to_end_resume_and_reuse(tmp_path, monkeypatch):
    out = tmp_path / "bench"
    real_pretrain = api.pretrain
    calls = []

    def crash_simclr(cfg, **kw):
        calls.append((cfg.method, kw.get("resume", False)))
        if cfg.method == "simclr":
            def stop(epoch):
                if epoch == 1:
                    raise Stop
            kw["on_epoch_end"] = stop
        return real_pretrain(cfg, **kw)

    monkeypatch.setattr(api, "pretrain", crash_simclr)
    with pytest.raises(Stop):
        selfsup.bench("autoencoder,simclr", "digits", out, epochs=2, **FAST)
    state = json.loads((out / "bench.json").read_text())
    assert state["methods"]["autoencoder"]["eval"] and "eval" not in state["methods"]["simclr"]
    assert epochs_of(out / "simclr") == [1]

    calls.clear()
    monkeypatch.setattr(api, "pretrain", lambda cfg, **kw: calls.append((cfg.method, kw.get("resume", False)))
                        or real_pretrain(cfg, **kw))
    evaluated = []
    real_evaluate = api.evaluate
    monkeypatch.setattr(api, "evaluate", lambda run, **kw: evaluated.append(run) or real_evaluate(run, **kw))
    state = selfsup.bench("autoencoder,simclr", "digits", out, epochs=2, **FAST)
    assert calls == [("simclr", True)]  # the finished method reused, the interrupted one resumed
    assert evaluated == [out / "simclr"] and epochs_of(out / "simclr") == [1, 2]

    md = (out / "bench.md").read_text()
    assert md == state["markdown"] and "Budget: 2 epochs per method" in md
    assert "| fine-tune 1% (≤5 steps) |" in md and "at most 5 (a cap below" in md  # a cap is never hidden
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = {r["name"]: r for r in table_rows(state)}
    assert list(rows) == ["autoencoder", "simclr", "random init (mlp)", "raw pixels"]
    for name, r in rows.items():
        assert f"| {name} |" in md
        for col in ("kNN", "linear", "linear 1%"):
            assert 0 < r[col] <= 100
        assert (r["fine-tune"] is None) == (name == "raw pixels")
    assert rows["raw pixels"]["kNN"] > 90  # digits pixels: a sanity floor for the evaluation wiring
    for name in ("autoencoder", "simclr"):
        entry = state["methods"][name]
        assert rows[name]["epochs"] == 2 and entry["epoch_s"] > 0 and entry["peak_mib"] > 0
        assert entry["eval"]["layer"] == entry["eval"]["layer_choice"]["layer"] == rows[name]["layer"].split(" ")[0]
        assert entry["eval"]["test_split"] == "the source's own test split"

    # everything done: a third call trains and evaluates nothing and prints the same table
    calls.clear()
    evaluated.clear()
    again = selfsup.bench("autoencoder,simclr", "digits", out, epochs=2, **FAST)
    assert calls == [] and evaluated == []
    assert again["markdown"].split("\n\n", 1)[1] == md.split("\n\n", 1)[1]
    with pytest.raises(SelfSupError, match="another protocol .*budget"):
        selfsup.bench("autoencoder", "digits", out, epochs=3, **FAST)


def test_minutes_budget_times_steps_then_trains_exactly_the_steps_that_fit(tmp_path):
    out = tmp_path / "m"
    state = selfsup.bench(["autoencoder"], "digits", out, minutes=0.02, layer="pooled", finetune=False, **FAST)
    entry = state["methods"]["autoencoder"]
    assert entry["timed_steps"] == 20 and entry["steps"] == max(1, math.floor(0.02 * 60 / entry["step_s"]))
    ck = torch.load(out / "autoencoder" / "checkpoints" / "last.pt", weights_only=True)
    assert ck["step"] == ck["config"]["steps"] == entry["steps"] == entry["steps_done"]  # one schedule, exact
    assert sorted(p.name for p in out.iterdir()) == ["autoencoder", "bench.json", "bench.md", "bench.png"]
    assert entry["eval"]["layer"] == "pooled"
    assert "0.02 minutes of training per method" in state["markdown"]
    assert "fine-tune" not in state["markdown"] and "no fine-tuning" in state["markdown"]
    assert all(r["finetune"] is None for r in entry["eval"]["results"])  # --no-finetune: none ran


def test_bad_bench_input_is_one_line_before_any_work(tmp_path, capsys):
    cases = [(["--epochs", "2", "--steps", "5"], "give one budget, not --steps and --epochs"),
             (["--minutes", "0"], "--minutes must be > 0"),
             (["--methods", "simclr,rotatoin", "--epochs", "1"], "rotatoin"),
             (["--methods", "autoencoder", "--epochs", "1", "--layer", "block2", "--backbone", "mlp"],
              "no layer 'block2' in MLPEncoder")]
    for args, needle in cases:
        assert main(["bench", "--data", "digits", "--out", str(tmp_path / "b"), "--device", "cpu", *args]) == 2
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert len(err) == 1 and needle in err[0], (args, err)
    assert not (tmp_path / "b").exists()


def _results(name, knn, linear, linear_1, finetune):
    return [dict(features=name, fraction=1.0, knn_tuned=knn, linear=linear, finetune=None),
            dict(features=name, fraction=0.01, knn_tuned=None, linear=linear_1, finetune=finetune)]


def test_chart_sorts_methods_marks_baselines_and_starts_its_axis_near_the_bars(tmp_path):
    linear = {"a": 0.83, "b": 0.87, "c": 0.85}
    methods = {n: dict(eval=dict(results=_results(f"{n} (ours)", 0.8, v, 0.6, 0.62)
                                 + _results("random init", 0.81, 0.86, 0.6, 0.57)
                                 + _results("raw pixels", 0.80, 0.826, 0.587, None),
                                 backbone="small_cnn", layer="block1", random_layer="block1", pretrain_epochs=20,
                                 splits=dict(train=4000, test=1000), test_split="holdout", finetune_epochs=3,
                                 finetune_min_steps=150), steps_done=300)
               for n, v in linear.items()}
    state = dict(protocol=dict(data="x.npz", budget="300 optimizer steps per method", backbone=None, layer="best",
                               seed=0, finetune_fraction=0.01, finetune_epochs=None, finetune_max_steps=None,
                               device="cpu", threads=1), methods=methods, order=list(linear), wall_s=1.0)
    ours, base = chart_rows(state)
    assert [r["name"] for r in ours] == ["b", "c", "a"]  # by linear accuracy, best first
    assert [r["name"] for r in base] == ["random init (small_cnn)", "raw pixels"]
    assert 70 <= _axis_from([83.0, 87.0, 85.0, 86.0, 82.6]) < 82.6  # a little below the lowest bar, not 0
    md = write_report(state, tmp_path)
    assert "| fine-tune 1% |" in md and "| b | small_cnn | block1 | 300 | 20 |" in md
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
