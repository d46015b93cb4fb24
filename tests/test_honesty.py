"""Numbers that cannot flatter: held-out images never reach pretraining, one process per run directory, every
bad input a one-line error that writes nothing."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup import Config, SelfSupError, evaluate, pretrain
from selfsup.cli import main
from selfsup.data import dataset_stats, load_data
from selfsup.methods.simclr import SimCLR
from selfsup.rundir import RunLock, RunPaths
from selfsup.train.checkpoint import load_checkpoint


@pytest.fixture
def numbered_folder(tmp_path):
    """60 PNGs in two class folders; image i is filled with the value 4 * i, so a batch tells whose images it holds."""
    root = tmp_path / "imgs"
    for i in range(60):
        cls = root / ("even" if i % 2 == 0 else "odd")
        cls.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8), 4 * i, np.uint8)).save(cls / f"{i:02d}.png")
    return root


def ids(x: torch.Tensor) -> set[int]:
    return {int(v) // 4 for v in x[:, 0, 0, 0].tolist()}


def test_holdout_images_never_reach_pretraining_and_eval_tests_on_exactly_them(numbered_folder, tmp_path,
                                                                               monkeypatch):
    drawn, monitored = set(), set()
    real_batch = SimCLR.make_batch
    monkeypatch.setattr(SimCLR, "make_batch", lambda self, x, g: (drawn.update(ids(x)), real_batch(self, x, g))[1])
    import selfsup.train.loop as loop

    real_monitor = loop.KNNMonitor
    monkeypatch.setattr(loop, "KNNMonitor", lambda bank, queries, **kw: (
        monitored.update(ids(bank.x) | ids(queries.x)), real_monitor(bank, queries, **kw))[1])
    run_dir = pretrain(Config(data=str(numbered_folder), out=str(tmp_path / "run"), device="cpu", epochs=3,
                              batch_size=8, method_args=dict(proj_hidden=32)), progress=False)
    full = load_data(str(numbered_folder))
    saved = json.loads(RunPaths(run_dir).holdout.read_text())
    held = set(ids(full.x[saved["indices"]]))
    assert len(held) == 12 and saved["n"] == 60  # 20% held out, seeded and stratified: 6 of each class
    assert sorted(full.labels[saved["indices"]].tolist()) == [0] * 6 + [1] * 6
    assert drawn and held.isdisjoint(drawn) and held.isdisjoint(monitored)  # pretraining never saw them
    assert drawn | held == set(range(60))
    rest = [i for i in range(60) if i not in set(saved["indices"])]
    spec = load_checkpoint(RunPaths(run_dir).last)["spec"]
    mean, std = dataset_stats(full.x[rest])
    assert spec["mean"] == pytest.approx(mean) and spec["std"] == pytest.approx(std)  # statistics of the rest
    assert spec["mean"] != pytest.approx(dataset_stats(full.x)[0])
    result = evaluate(run_dir, fractions=(1.0,), protocols=("knn",), progress=False)
    assert result["splits"] == {"train": 48, "test": 12} and "holdout" in result["test_split"]


def test_without_a_holdout_the_run_cannot_be_evaluated_on_its_own_images(numbered_folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["pretrain", "--data", str(numbered_folder), "--out", str(run), "--device", "cpu", "--epochs", "1",
                 "--holdout", "0", "--no-progress"]) == 0
    assert not RunPaths(run).holdout.exists()
    capsys.readouterr()
    assert main(["eval", str(run), "--no-progress"]) == 2
    assert "pretrained on every sample" in capsys.readouterr().err


def test_a_run_directory_in_use_is_refused_and_a_stale_lock_is_not(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["pretrain", "--data", "digits", "--out", str(run), "--device", "cpu", "--epochs", "1",
                 "--batch-size", "256", "--set", "proj_hidden=32", "--no-progress"]) == 0
    holder = RunLock(run).acquire()  # another process would hold it the same way
    capsys.readouterr()
    try:
        assert main(["pretrain", "--out", str(run), "--resume", "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert "is in use by selfsup pid" in err and len(err.strip().splitlines()) == 1
    finally:
        holder.release()
    (run / ".lock").write_text("selfsup pid 999999 on a machine that crashed")  # left behind, nobody holds it
    assert main(["pretrain", "--out", str(run), "--resume", "--no-progress"]) == 0
    assert load_checkpoint(RunPaths(run).last)["epoch"] == 1  # a finished run: resumed, nothing to train


BAD_PRETRAIN = [
    (["--batch-size", "0"], "--batch-size must be an integer >= 2"),
    (["--epochs", "-3"], "--epochs must be an integer >= 0"),
    (["--lr", "-1"], "--lr must be a number > 0"),
    (["--weight-decay", "-0.1"], "--weight-decay must be"),
    (["--warmup-epochs", "-1"], "--warmup-epochs must be"),
    (["--steps", "0"], "--steps must be"),
    (["--holdout", "1"], "--holdout must be a fraction"),
    (["--knn-every", "-1"], "--knn-every must be"),
    (["--threads", "0"], "--threads must be"),
    (["--seed", "-1"], "--seed must be"),
    (["--epochs", "many"], "invalid int value"),
    (["--precision", "fp8"], "invalid choice"),
    (["--optimizer", "rmsprop"], "invalid choice"),
    (["--temperature", "0"], "temperature must be > 0"),
    (["--method", "moco", "--queue-size", "0"], "queue_size must be >= 1"),
    (["--method", "moco", "--queue-size", "99999"], "exceeds the 1257 training samples"),
    (["--set", "oops"], "--set expects KEY=VALUE"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--data", "nowhere/at/all"], "no such file or directory"),
]
if not torch.cuda.is_available():
    BAD_PRETRAIN.append((["--device", "cuda"], "this machine has no CUDA GPU"))


def one_line_error(capsys, argv) -> str:
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("selfsup: error:"), (code, err)
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("flags,message", BAD_PRETRAIN, ids=[" ".join(f) for f, _ in BAD_PRETRAIN])
def test_bad_pretrain_input_is_one_line_and_writes_nothing(tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    data = [] if "--data" in flags else ["--data", "digits"]  # --data repeated is a union of text sources
    argv = ["pretrain", *data, "--out", str(out), "--device", "cpu", *flags]
    assert message in one_line_error(capsys, argv)
    assert not out.exists()


def test_out_under_a_regular_file_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    line = one_line_error(capsys, ["pretrain", "--data", "digits", "--out", str(tmp_path / "file" / "run"),
                                   "--device", "cpu", "--epochs", "1"])
    assert "cannot create run directory" in line and "Not a directory" in line


@pytest.mark.parametrize("flags,message", [
    (["--k", "0"], "--k must be an integer >= 1"),
    (["--temperature-knn", "0"], "--temperature-knn must be > 0"),
    (["--finetune-epochs", "0"], "--finetune-epochs must be >= 1"),
    (["--finetune-max-steps", "0"], "--finetune-max-steps must be >= 1"),
    (["--protocols", "knn,probe"], "unknown protocol(s) probe"),
    (["--fractions", "0"], "label fraction 0 is not in (0, 1]"),
])
def test_bad_eval_input_is_one_line(tmp_path, capsys, flags, message):
    assert message in one_line_error(capsys, ["eval", str(tmp_path / "no-run-needed"), *flags])


def test_zero_epochs_saves_the_untrained_model(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["pretrain", "--data", "digits", "--out", str(run), "--device", "cpu", "--epochs", "0",
                 "--set", "proj_hidden=32", "--no-progress"]) == 0
    ckpt = load_checkpoint(RunPaths(run).last)
    assert ckpt["epoch"] == 0 and ckpt["step"] == 0
    with pytest.raises(SelfSupError, match="no such run directory"):
        evaluate(tmp_path / "other")
    assert main(["embed", str(run), "--data", "digits", "--out", str(tmp_path / "f.npy")]) == 0


class Marked(torch.nn.Module):
    """A backbone whose every layer carries the input's first pixel, untouched, as its first feature: a test
    image (first pixel 1, a value no digits image has) is recognisable in any feature tensor, exactly."""

    layer_names = ("noise", "signal")
    feature_dim = 9

    def __init__(self, seed: int):
        super().__init__()
        self.seed = seed

    def forward(self, x):
        return self.forward_layers(x)["pooled"]

    def forward_layers(self, x):
        flat = x.flatten(1)
        noise = torch.randn(x.shape[0], 8, generator=torch.Generator().manual_seed(self.seed))
        return {"noise": torch.cat([flat[:, :1], noise], 1), "signal": flat,
                "pooled": torch.cat([flat[:, :1], noise + flat[:, 1:9]], 1)}


def test_no_test_sample_reaches_any_fit_predict_or_score_while_choosing(digits, monkeypatch):
    """Exact, not probabilistic: every tensor that reaches a fit, predict or score call (or the random-init
    BatchNorm re-estimation) while a layer, k or L2 is being chosen is checked, row by row, for test samples."""
    from selfsup.data import image_spec
    from selfsup.evaluate import layers, report, tuning
    from selfsup.evaluate.linear import LinearClassifier
    from selfsup.models import Encoder

    torch.set_num_threads(1)  # many small L-BFGS steps: a second thread only waits on a shared CPU
    train, test = (d.subset(torch.arange(n)) for d, n in zip(digits, (600, 200)))
    test_x = test.x.clone()
    test_x[:, 0, 0, 0] = 1  # the mark
    assert not (train.x[:, 0, 0, 0] == 1).any()
    spec = image_spec(train.x.shape[1:], [0.5], [0.25])
    ours = Encoder(Marked(0), spec)
    marks = [float(ours.prepare(test_x[:1]).flatten()[0]), float(test_x[:1].float().flatten()[0] / 255)]

    def has_test(t) -> bool:
        if isinstance(t, (list, tuple)):
            return any(has_test(v) for v in t)
        if not torch.is_tensor(t) or t.dim() < 2:
            return False  # labels and scalars carry no sample
        if t.dtype == torch.uint8:
            return bool((t.reshape(t.shape[0], -1)[:, 0] == 1).any())
        first = t.reshape(t.shape[0], -1)[:, 0].float()
        return any(bool((first == m).any()) for m in marks)

    depth, calls = [0], []

    def spy(name, real, chooser=False):
        def wrapped(*args, **kwargs):
            tainted = any(has_test(a) for a in (*args, *kwargs.values()))
            calls.append((name, depth[0] > 0 or chooser, tainted))
            depth[0] += chooser
            try:
                return real(*args, **kwargs)
            finally:
                depth[0] -= chooser
        return wrapped

    for module, attr in [(tuning, "fit_linear"), (tuning, "knn_predict_many"), (layers, "knn_predict_many"),
                         (layers, "extract_layers")]:
        monkeypatch.setattr(module, attr, spy(attr, getattr(module, attr)))
    monkeypatch.setattr(LinearClassifier, "accuracy", spy("accuracy", LinearClassifier.accuracy))
    for module, attr in [(tuning, "choose_k"), (tuning, "choose_l2"), (report, "choose_layer"),
                         (report, "reestimate_batchnorm")]:
        monkeypatch.setattr(module, attr, spy(attr, getattr(module, attr), chooser=True))

    result = report.evaluate_encoder(ours, lambda: Encoder(Marked(1), spec), train.x, train.labels, test_x,
                                     test.labels, 10, "cpu", fractions=(0.1, 1.0), protocols=("knn", "linear"),
                                     progress=False, layer_by="knn")  # (by "linear": the same search_l2 as L2)
    choosing = [(name, tainted) for name, inside, tainted in calls if inside]
    leaks = [name for name, tainted in choosing if tainted]
    assert not leaks, f"test samples reached {sorted(set(leaks))} while choosing"
    # the spy saw every kind of call while choosing, and it does see test samples where they belong: the
    # final accuracies, after every choice
    assert {n for n, _ in choosing} >= {"fit_linear", "accuracy", "knn_predict_many", "extract_layers",
                                        "choose_k", "choose_l2", "choose_layer", "reestimate_batchnorm"}
    assert {n for n, inside, tainted in calls if tainted and not inside} == {"knn_predict_many", "accuracy"}
    rows = {(r["features"], r["fraction"]): r for r in result["results"]}
    assert rows[("selfsup", 1.0)]["layer"] == "signal" and rows[("raw pixels", 1.0)]["linear"] > 0.85
