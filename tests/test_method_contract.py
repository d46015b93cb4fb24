"""The method contract: a method defined here, in the test file, runs through the CLI with no other file edited;
the built-in methods give the same per-step losses as before the contract; settings, optimizer defaults and
EMA teachers behave as documented."""
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from selfsup import Config, SelfSupError, pretrain
from selfsup.cli import main
from selfsup.config import resolve
from selfsup.losses import top1
from selfsup.methods import EMATeacher, Method, OptimDefaults, get_method, methods, register, setting
from selfsup.methods.hparams import field_sources
from selfsup.models import mlp_head
from selfsup.rundir import RunPaths, build_method, checkpoint_spec
from selfsup.train.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = Path(__file__).parent / "fixtures" / "reference_losses.json"


@register
class ToyFlip(Method):
    """Predict whether an image was mirrored left-right: one class, registered here, nowhere else."""

    name = "toy_flip"
    paper = "a toy pretext task for the method-contract test"
    optimizers = {"adamw": OptimDefaults(lr=2e-3, weight_decay=0.0)}

    @dataclass
    class Hparams:
        hidden: int = setting(32, "hidden width of the flip classifier")
        flip_p: float = setting(0.5, "probability that an image is mirrored")

    def __init__(self, spec, hp, backbone):
        super().__init__(spec, hp, backbone)
        self.head = mlp_head(self.backbone.feature_dim, hp.hidden, 2)

    def make_batch(self, x, generator):
        flipped = torch.rand(x.shape[0], generator=generator, device=x.device) < self.hp.flip_p
        x = torch.where(flipped[:, None, None, None], x.flip(-1), x)
        return {"x": self.encoder().prepare(x), "flipped": flipped.long()}

    def forward(self, batch):
        logits = self.head(self.backbone(batch["x"]))  # logits: B x 2
        return F.cross_entropy(logits, batch["flipped"]), {"flip_acc": top1(logits, batch["flipped"])}


@register
class ToyEMA(Method):
    """A BYOL-like toy: a student regresses its EMA teacher's projection of another view."""

    name = "toy_ema"
    paper = "a toy with an EMA teacher for the contract test"
    optimizers = {"sgd": OptimDefaults(lr=0.05, weight_decay=0.0)}

    @dataclass
    class Hparams:
        momentum: float = setting(0.9, "teacher momentum at the first step")

    def __init__(self, spec, hp, backbone):
        super().__init__(spec, hp, backbone)
        self.projector = mlp_head(self.backbone.feature_dim, 32, 16)
        self.teacher = EMATeacher(self.backbone, self.projector, momentum=hp.momentum, schedule="cosine")

    def make_batch(self, x, generator):
        noise = torch.randn(x.shape, generator=generator, device=x.device)
        x = self.encoder().prepare(x)
        return {"a": x + 0.1 * noise, "b": x - 0.1 * noise}

    def forward(self, batch):
        z = self.projector(self.backbone(batch["a"]))
        with torch.no_grad():
            t = self.teacher(batch["b"])
        return F.mse_loss(F.normalize(z, dim=1), F.normalize(t, dim=1)), {}


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(capsys, *args) -> str:
    code, _, err = run_cli(capsys, *args)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("selfsup: error:"), (code, err)
    return lines[0]


def test_method_defined_in_a_test_file_runs_pretrain_eval_embed_through_the_cli(tmp_path, capsys):
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, "pretrain", "--method", "toy_flip", "--data", "digits", "--out", run,
                             "--device", "cpu", "--epochs", "3", "--batch-size", "64", "--hidden", "16",
                             "--set", "flip_p=0.4", "--no-progress")
    assert code == 0, err
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["method"] == "toy_flip" and saved["method_args"] == {"hidden": 16, "flip_p": 0.4}
    assert saved["optimizer"] == "adamw" and saved["lr"] == 2e-3  # the toy's own default, not another method's
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in recs] == [1, 2, 3]
    assert all(0.0 <= r["logs"]["flip_acc"] <= 1.0 for r in recs)  # the method's logs reach metrics.jsonl
    assert (run / "plots" / "logs.png").stat().st_size > 2000
    assert not (run / "plots" / "views.png").exists()  # no view recipe declared: no preview

    code, out, err = run_cli(capsys, "eval", run, "--fractions", "100%", "--protocols", "knn,linear",
                             "--no-progress")
    assert code == 0, err
    assert "| toy_flip (ours) | 100% (1257) |" in out and "raw pixels" in out and "random init" in out

    code, out, err = run_cli(capsys, "embed", run, "--data", "digits", "--split", "test", "--out",
                             tmp_path / "f.npz")
    assert code == 0, err
    z = np.load(tmp_path / "f.npz")
    assert z["features"].shape == (540, 256) and z["labels"].shape == (540,)  # the small CNN's 256 features

    code, out, _ = run_cli(capsys, "methods", "toy_flip")
    assert code == 0 and "hidden width of the flip classifier" in out and "a toy pretext task" in out


def test_readme_example_is_a_working_method(tmp_path):
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Adding a method"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace = {"__name__": "readme_example"}
    exec(compile(code, "README.md", "exec"), namespace)
    cls = next(v for v in namespace.values() if isinstance(v, type) and issubclass(v, Method) and v is not Method)
    assert get_method(cls.name) is cls
    run_dir = pretrain(Config(method=cls.name, data="digits", out=str(tmp_path / "r"), device="cpu", epochs=2,
                              batch_size=64, knn_every=1), progress=False)
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) and 0 <= r["knn"] <= 1 for r in recs)


@pytest.mark.parametrize("name", ["simclr", "moco", "autoencoder"])
def test_builtin_methods_give_their_recorded_per_step_losses(tmp_path, monkeypatch, name):
    # Recorded from the code before the method contract (SimCLR, autoencoder) and, for MoCo, after issues 7 and 15
    # changed it on purpose (issue 7: shuffle-BN keys, both keys enqueued; issue 15: the CIFAR-10 demo's lr, key
    # BatchNorm groups of their own size; the earlier values stay under "superseded", each with why).
    fixture = json.loads(FIXTURE.read_text())
    case = dict(fixture["losses"][name]["config"])
    method, backbone = case.pop("method"), case.pop("backbone")
    cls = get_method(method)
    losses, real = [], cls.forward

    def recording(self, batch):
        loss, logs = real(self, batch)
        losses.append(loss.item())
        return loss, logs

    monkeypatch.setattr(cls, "forward", recording)
    pretrain(Config(**fixture["settings"], method=method, backbone=backbone, method_args=case,
                    out=str(tmp_path / name)), progress=False)
    expected = fixture["losses"][name]["values"]
    # Recorded on an AMD EPYC. Another CPU's kernels sum in another order: on an Intel Xeon the first steps
    # agree to 1e-6, and training amplifies the rounding to 4e-5 (SimCLR) and 1.6e-3 (MoCo, whose BatchNorm
    # sees sub-batches of 16) relative by step 20. A changed method (views, loss, init, schedule) moves the
    # first losses by far more than 1e-5, so the first steps are held tight and the rest within 1%.
    np.testing.assert_allclose(losses[:3], expected[:3], rtol=1e-5, atol=0)
    np.testing.assert_allclose(losses[:fixture["steps"]], expected, rtol=1e-2, atol=0)


def test_misspelled_setting_is_a_one_line_error_naming_the_nearest(tmp_path, capsys):
    line = one_line_error(capsys, "pretrain", "--data", "digits", "--out", tmp_path / "r", "--device", "cpu",
                          "--set", "temprature=0.5")
    assert "simclr has no setting 'temprature'" in line and "did you mean 'temperature'" in line
    line = one_line_error(capsys, "pretrain", "--method", "moco", "--data", "digits", "--out", tmp_path / "r",
                          "--device", "cpu", "--queue-size", "lots")
    assert "queue_size expects int" in line
    with pytest.raises(SelfSupError, match="did you mean 'queue_size'"):
        resolve(Config(method="moco", method_args={"queue_sise": 64}), "cpu")
    assert "did you mean 'simclr'" in one_line_error(capsys, "pretrain", "--method", "simclrr", "--data", "digits")
    assert not (tmp_path / "r").exists()  # nothing was written


def test_optimizer_defaults_belong_to_the_chosen_optimizer(tmp_path, capsys):
    line = one_line_error(capsys, "pretrain", "--method", "autoencoder", "--optimizer", "sgd", "--data", "digits",
                          "--out", tmp_path / "r", "--device", "cpu")
    assert "autoencoder has no default learning rate for --optimizer sgd" in line and "--lr" in line
    assert resolve(Config(method="autoencoder", optimizer="sgd", lr=0.01), "cpu").lr == 0.01
    lars = resolve(Config(method="simclr", batch_size=512), "cpu")
    assert (lars.optimizer, lars.lr, lars.weight_decay) == ("lars", 0.6, 1e-6)  # 0.3 per 256 samples
    code, _, err = run_cli(capsys, "pretrain", "--method", "simclr", "--optimizer", "adamw", "--data", "digits",
                           "--out", tmp_path / "a", "--device", "cpu", "--epochs", "1", "--batch-size", "128",
                           "--proj-hidden", "64", "--knn-every", "0", "--no-progress")
    assert code == 0, err
    saved = Config.load(tmp_path / "a" / "config.yaml")
    assert (saved.optimizer, saved.lr, saved.weight_decay) == ("adamw", 1e-3, 1e-6)  # AdamW's lr, not LARS's 0.3
    groups = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")["optimizer"]["param_groups"]
    assert all("betas" in g for g in groups)  # the optimizer that trained was AdamW


def test_loop_applies_the_ema_update_after_the_optimizer_step(tmp_path, monkeypatch):
    events = []
    real_step, real_update = torch.optim.SGD.step, EMATeacher.update
    monkeypatch.setattr(torch.optim.SGD, "step", lambda self, *a, **k: (events.append("step"), real_step(self))[1])
    monkeypatch.setattr(EMATeacher, "update", lambda self, s, t: (events.append("ema"), real_update(self, s, t))[1])
    cfg = Config(method="toy_ema", data="digits", out=str(tmp_path / "r"), device="cpu", epochs=1,
                 batch_size=1024, knn_every=0, warmup_epochs=0)
    run_dir = pretrain(cfg, progress=False)  # 1257 digits, batch 1024: exactly one step
    assert events == ["step", "ema"]
    ck = load_checkpoint(RunPaths(run_dir).last)
    init = build_method(Config.from_dict(ck["config"]), checkpoint_spec(ck)).state_dict()
    final, m = ck["model"], 0.9  # the first update uses the base momentum
    w = "backbone.features.0.0.weight"
    teacher = final["teacher.net.0." + w[len("backbone."):]]
    assert not torch.equal(final[w], init[w])  # the step moved the student
    # after the step: m * (teacher = initial student) + (1 - m) * (student after the step)
    torch.testing.assert_close(teacher, m * init[w] + (1 - m) * final[w])
    assert not torch.allclose(teacher, init[w])  # an update before the step would have left the copy unchanged


def test_ema_schedule_state_survives_resume(tmp_path, pretrain_until):
    def cfg(out):
        return Config(method="toy_ema", data="digits", out=str(out), device="cpu", epochs=3, batch_size=256,
                      knn_every=0)

    full = load_checkpoint(RunPaths(pretrain(cfg(tmp_path / "a"), progress=False)).last)
    pretrain_until(cfg(tmp_path / "b"), 1)
    half = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")
    assert half["model"]["teacher.updates"].item() == 4  # 1257 // 256 steps in the first epoch
    resumed = load_checkpoint(RunPaths(pretrain(Config(out=str(tmp_path / "b"), epochs=3), resume=True,
                                                progress=False)).last)
    for k in full["model"]:
        assert torch.equal(full["model"][k], resumed["model"][k]), k
    total = full["step"]
    teacher = EMATeacher(torch.nn.Linear(1, 1), momentum=0.9, schedule="cosine")
    assert full["model"]["teacher.updates"].item() == total == 12
    assert full["model"]["teacher.momentum"].item() == pytest.approx(teacher.momentum_at(total - 1, total))
    assert half["model"]["teacher.momentum"].item() == pytest.approx(teacher.momentum_at(3, total))
    assert 0.9 < half["model"]["teacher.momentum"].item() < full["model"]["teacher.momentum"].item()


def test_methods_command_lists_every_method_with_paper_data_and_defaults(capsys):
    code, out, _ = run_cli(capsys, "methods")
    assert code == 0
    assert "simclr: Chen et al. 2020, A Simple Framework" in out
    assert "moco (also mocov2, moco_v2, moco-v2): Chen et al. 2020" in out and "He et al. 2020" in out
    assert "autoencoder (also ae): Hinton & Salakhutdinov 2006" in out
    assert "settings: temperature=0.2, proj_hidden=2048, proj_dim=128" in out
    assert "lars lr 0.3 wd 1e-06, sgd lr 0.06" in out and "data: image" in out
    code, out, _ = run_cli(capsys, "methods", "mocov2")  # aliases work
    assert "--queue-size / --set queue_size=...  int|None, default None: number of queued negative keys" in out


BUILTINS = ["autoencoder", "barlow_twins", "byol", "colorization", "denoising", "dino", "inpainting", "jigsaw", "mae",
            "mlm", "moco", "mocov3", "relative_position", "rotation", "simclr", "simcse", "simsiam", "vicreg"]
# Their files belong to other work in flight; the sources are added at merge (then this strict xfail fails).
SOURCES_PENDING: set[str] = set()


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason="sources pending"))
                                  if n in SOURCES_PENDING else n for n in BUILTINS])
def test_every_default_of_a_builtin_method_names_its_source(name, capsys):
    cls = get_method(name)
    assert all(d.source for d in cls.optimizers.values()), name
    assert all(field_sources(cls.Hparams).values()), {k: v for k, v in field_sources(cls.Hparams).items() if not v}
    code, out, _ = run_cli(capsys, "methods", name)
    assert code == 0 and "(the method does not say)" not in out
    assert out.count("        from: ") == len(cls.optimizers) + len(field_sources(cls.Hparams))


def test_methods_command_says_where_each_default_comes_from(capsys):
    assert {n for n, c in methods().items() if c.__module__.startswith("selfsup.methods.")} == set(BUILTINS)
    code, out, _ = run_cli(capsys, "methods", "moco")
    assert "defaults: the official MoCo CIFAR-10 demo (--preset paper: MoCo v2's ImageNet recipe)" in out
    assert "sgd lr 0.03 wd 0.0005\n        from: the MoCo CIFAR-10 demo" in out
    assert ("--temperature / --set temperature=...  float, default 0.1: softmax temperature of InfoNCE (cifar-demo "
            "0.1, paper 0.2)\n        from: cifar-demo: the demo's --moco-t 0.1; paper: Chen et al. 2020 "
            "(MoCo v2)") in out
    code, out, _ = run_cli(capsys, "methods", "toy_flip")  # a method that does not say: said so
    assert out.count("(the method does not say)") == 3


def test_registration_checks_the_declarations():
    def make(**attrs):
        return type("Bad", (Method,), {"name": "bad_toy", "optimizers": {"sgd": OptimDefaults(0.1, 0.0)}, **attrs})

    @dataclass
    class NoDefault:
        width: int

    @dataclass
    class Clash:
        lr: float = 0.1

    with pytest.raises(TypeError, match="has no default"):
        register(make(Hparams=NoDefault))
    with pytest.raises(TypeError, match="clashes with the run-level flag"):
        register(make(Hparams=Clash))
    with pytest.raises(TypeError, match="optimizers"):
        register(make(optimizers={"rmsprop": OptimDefaults(0.1, 0.0)}))
    with pytest.raises(TypeError, match="taken by"):
        register(type("Other", (Method,), {"name": "simclr", "optimizers": {"sgd": OptimDefaults(0.1, 0.0)}}))


def test_resume_refuses_changed_settings(tmp_path, capsys):
    line = one_line_error(capsys, "pretrain", "--out", tmp_path, "--resume", "--temperature", "0.5", "--lr", "1")
    assert "--resume continues a run with its saved settings; drop --lr, --temperature" in line


def test_legacy_config_keys_become_method_settings():
    old = dict(method="moco", temperature=0.2, queue_size=256, proj_hidden=None, momentum=0.999)
    cfg = Config.from_dict(old)
    assert cfg.method_args == {"temperature": 0.2, "queue_size": 256, "momentum": 0.999}
    with pytest.raises(SelfSupError, match="did you mean 'epochs'"):
        Config.from_dict({"epoch": 3})
