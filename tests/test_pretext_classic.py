"""The classic pretext tasks: rotation, relative patch position, jigsaw, colorization.

Label construction is checked against the geometry it claims (torch.rot90, explicit permutations, the CIE
formulas; the patch and tile geometry in test_pretext_geometry.py); each method then trains on CPU with a
falling loss and runs the CLI path pretrain -> eval -> embed."""
import itertools
import json
import math

import numpy as np
import pytest
import torch

from selfsup.cli import main
from selfsup.data.types import image_spec
from selfsup.methods import get_method, parse_hparams
from selfsup.train.checkpoint import load_checkpoint
from selfsup.views.color import ab_bins, lab_to_rgb, nearest_bin, rebalance_weights, rgb_to_lab, soft_encode
from selfsup.views.pretext import (all_rotations, hamming_permutations, min_hamming, patch_grid, rotate90,
                                   shuffle_tiles, unshuffle_tiles)


# ----------------------------------------------------------------------------------------- rotation

def test_rotations_are_exact_quarter_turns_labelled_by_their_count():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    assert rotate90(x, torch.tensor([1])).flatten().tolist() == [2.0, 4.0, 1.0, 3.0]  # counter-clockwise
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 5, 5, generator=g)
    k = torch.randint(0, 4, (6,), generator=g)
    out = rotate90(x, k)
    for i in range(6):
        assert torch.equal(out[i], torch.rot90(x[i], int(k[i]), dims=(-2, -1)))
    views, labels = all_rotations(x)
    assert views.shape == (24, 3, 5, 5) and labels.tolist() == [j for j in range(4) for _ in range(6)]
    for n in range(24):
        assert torch.equal(views[n], torch.rot90(x[n % 6], int(labels[n]), dims=(-2, -1)))


# ------------------------------------------------------------------------------ relative position

@pytest.mark.parametrize("side", [8, 28, 32, 64, 96])
def test_patch_grid_fits_with_a_gap_wider_than_the_jitter(side):
    g = patch_grid(side, side)
    assert g.span[0] <= side and g.patch[0] >= 2
    assert g.gap[0] > 2 * g.jitter[0]  # neighbouring patches can never touch
    if side >= 28:
        assert g.jitter[0] >= 1


# ------------------------------------------------------------------------------------------ jigsaw

def test_permutation_set_is_valid_far_apart_deterministic_and_invertible():
    perms = hamming_permutations(100, 9, seed=0)
    assert perms.shape == (100, 9)
    assert all(sorted(row) == list(range(9)) for row in perms.tolist())  # each row a permutation
    assert len({tuple(row) for row in perms.tolist()}) == 100  # unique
    rows = perms.numpy()
    brute = min(int((a != b).sum()) for a, b in itertools.combinations(rows, 2))
    assert brute == min_hamming(perms) >= 6  # the stated minimum distance, checked pair by pair
    assert torch.equal(perms, hamming_permutations(100, 9, seed=0))  # generated deterministically
    assert not torch.equal(perms, hamming_permutations(100, 9, seed=1))
    # a random set of 100 is much closer: the greedy selection is what spreads them
    rnd = torch.stack([torch.randperm(9, generator=torch.Generator().manual_seed(i)) for i in range(100)])
    assert min_hamming(rnd) < min_hamming(perms)
    tiles = torch.rand(5, 9, 1, 3, 3)
    index = torch.tensor([0, 7, 42, 99, 7])
    shuffled = shuffle_tiles(tiles, perms, index)
    for b in range(5):
        for i in range(9):
            assert torch.equal(shuffled[b, i], tiles[b, perms[index[b], i]])
    assert torch.equal(unshuffle_tiles(shuffled, perms, index), tiles)  # the inverse permutation restores them


# ---------------------------------------------------------------------------------------------- Lab

def lab_reference(r, g, b):
    """One pixel by the CIE / IEC 61966-2-1 formulas, scalar math, D65."""
    def lin(u):
        return u / 12.92 if u <= 0.04045 else ((u + 0.055) / 1.055) ** 2.4

    r, g, b = lin(r), lin(g), lin(b)
    X = (0.4124564 * r + 0.3575761 * g + 0.1804375 * b) / 0.95047
    Y = 0.2126729 * r + 0.7151522 * g + 0.0721750 * b
    Z = (0.0193339 * r + 0.1191920 * g + 0.9503041 * b) / 1.08883

    def f(t):
        return t ** (1 / 3) if t > (6 / 29) ** 3 else t / (3 * (6 / 29) ** 2) + 4 / 29

    return 116 * f(Y) - 16, 500 * (f(X) - f(Y)), 200 * (f(Y) - f(Z))


def test_rgb_lab_matches_the_cie_formula_and_round_trips():
    known = {(1.0, 1.0, 1.0): (100.0, 0.0, 0.0), (0.0, 0.0, 0.0): (0.0, 0.0, 0.0),
             (1.0, 0.0, 0.0): (53.24, 80.09, 67.20), (0.0, 1.0, 0.0): (87.73, -86.18, 83.18),
             (0.0, 0.0, 1.0): (32.30, 79.19, -107.86)}  # published sRGB/D65 values
    for rgb, lab in known.items():
        got = rgb_to_lab(torch.tensor(rgb).view(1, 3, 1, 1)).flatten().tolist()
        assert got == pytest.approx(lab, abs=0.02)
    x = torch.rand(4, 3, 6, 5, generator=torch.Generator().manual_seed(0))
    x[0, :, 0, 0] = 0.01  # the linear segments of both curves
    lab = rgb_to_lab(x)
    for b, i, j in [(0, 0, 0), (1, 2, 3), (3, 5, 4), (2, 1, 0)]:
        assert lab[b, :, i, j].tolist() == pytest.approx(lab_reference(*x[b, :, i, j].tolist()), abs=1e-3)
    assert (lab_to_rgb(lab) - x).abs().max() < 1e-4
    x64 = x.double()
    assert (lab_to_rgb(rgb_to_lab(x64)) - x64).abs().max() < 1e-10


def test_ab_bins_soft_encoding_and_rebalancing():
    bins = ab_bins(10)
    assert 200 < len(bins) < 400  # Zhang et al. keep 313 cells of this lattice
    ab = rgb_to_lab(torch.rand(1, 3, 20, 20, generator=torch.Generator().manual_seed(0)))[0, 1:].reshape(2, -1).T
    assert (torch.cdist(ab, bins).min(1).values <= 10 / math.sqrt(2) + 1e-3).all()  # every colour has its cell
    target = soft_encode(ab, bins, k=5, sigma=5.0)
    assert torch.allclose(target.sum(1), torch.ones(len(ab))) and ((target > 0).sum(1) == 5).all()
    assert torch.equal(target.argmax(1), nearest_bin(ab, bins))
    counts = torch.ones(len(bins))
    counts[0] = 1000.0
    w = rebalance_weights(counts, bins, lam=0.5)
    p = counts / counts.sum()
    kernel = torch.exp(-torch.cdist(bins, bins).pow(2) / 50)
    p_s = kernel @ p
    p_s /= p_s.sum()
    assert float((p_s * w).sum()) == pytest.approx(1.0, rel=1e-4)  # E_p~[w] = 1
    assert w[0] < w.median() and w.max() / w.min() <= 1 / 0.5 / (0.5 / len(bins)) * 1.01
    assert torch.allclose(rebalance_weights(counts, bins, lam=1.0), torch.ones(len(bins)), atol=1e-5)


# ------------------------------------------------------------------------------ the methods themselves

def colour_array(path, n=320, side=16):
    """RGB images whose colour follows their lightness and class (so colour is predictable from L)."""
    g = np.random.default_rng(0)
    base = g.random((n, side // 4, side // 4))
    v = np.kron(base, np.ones((4, 4)))  # blocky lightness patterns
    y = np.arange(n) % 3
    palette = np.array([[0.9, 0.2, 0.1], [0.1, 0.7, 0.2], [0.2, 0.3, 0.9]])
    img = v[..., None] * palette[y][:, None, None, :] + (1 - v[..., None]) * palette[(y + 1) % 3][:, None, None, :]
    np.savez(path, images=np.round(img * 255).astype(np.uint8), labels=y)
    return path


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def digits_array(path, n=400, scale=1):
    """The first n of sklearn's digits (8 x 8, or each pixel repeated scale x scale) as an .npz: a CLI source
    small enough for a few CPU seconds."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.kron(d.images[:n], np.ones((1, scale, scale)))
    np.savez(path, images=np.round(images * 255 / 16).astype(np.uint8), labels=d.target[:n])
    return path


CASES = {  # method -> (RGB data?, settings, the log that must beat chance, chance)
    "rotation": (False, [], "rot_acc", 0.25),
    "relative_position": (False, ["--lr", "3e-3"], "pos_acc", 0.125),
    "jigsaw": (False, ["--permutations", "8"], "perm_acc", 0.125),  # on 16 px digits: 8 px leave no gap
    "colorization": (True, [], "bin_acc", None),
}


@pytest.mark.parametrize("name", list(CASES))
def test_method_learns_and_runs_pretrain_eval_embed_through_the_cli(name, tmp_path, capsys):
    rgb, settings, acc, chance = CASES[name]
    data = colour_array(tmp_path / "colour.npz") if rgb else digits_array(tmp_path / "digits.npz",
                                                                         scale=2 if name == "jigsaw" else 1)
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "pretrain", "--method", name, "--data", data, "--out", run, "--device", "cpu",
                           "--epochs", "4", "--batch-size", "64", "--warmup-epochs", "0", "--knn-every", "0",
                           "--no-progress", *settings)
    assert code == 0, err
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert recs[-1]["loss"] < 0.9 * recs[0]["loss"], [r["loss"] for r in recs]  # the loss falls
    if chance is not None:
        assert recs[-1]["logs"][acc] > 1.5 * chance, recs[-1]  # the task is being solved, not guessed
    code, out, err = run_cli(capsys, "eval", run, "--fractions", "100%", "--protocols", "knn,linear", "--no-progress")
    assert code == 0, err
    assert f"| {name} (ours) |" in out and "random init" in out and "raw pixels" in out
    code, _, err = run_cli(capsys, "embed", run, "--data", data, "--out", tmp_path / "f.npz")
    assert code == 0, err
    assert np.load(tmp_path / "f.npz")["features"].shape[1] == 256  # the small CNN's features
    if name == "jigsaw":  # the permutation set travels in the checkpoint
        saved = load_checkpoint(run / "checkpoints" / "last.pt")["model"]["permutations"]
        assert torch.equal(saved, hamming_permutations(8, 9, seed=0))


def test_colorization_encoder_takes_lightness_and_grayscale_data_is_refused(tmp_path, capsys):
    cls = get_method("colorization")
    spec = image_spec((3, 16, 16), (0.5,) * 3, (0.25,) * 3)
    method = cls(spec, parse_hparams("colorization", cls.Hparams, {}), "small_cnn")
    assert cls.encoder_spec(spec).shape == (1, 16, 16)
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    prepared = method.encoder().prepare(x)
    expected = (rgb_to_lab(x.float() / 255)[:, :1] / 100 - 0.5) / 0.25
    assert prepared.shape == (4, 1, 16, 16) and torch.allclose(prepared, expected)
    assert method.encoder()(x).shape == (4, method.backbone.feature_dim)
    code, _, err = run_cli(capsys, "pretrain", "--method", "colorization", "--data", "digits", "--out",
                           tmp_path / "r", "--device", "cpu")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "needs RGB images" in lines[0] and "1-channel" in lines[0]
    assert not (tmp_path / "r").exists()  # refused before anything was written
    np.savez(tmp_path / "tiny.npz", images=np.zeros((20, 6, 6), np.uint8))
    code, _, err = run_cli(capsys, "pretrain", "--method", "relpos", "--data", tmp_path / "tiny.npz", "--out",
                           tmp_path / "t", "--device", "cpu")
    assert code == 2 and "too small for a 3x3 grid" in err and not (tmp_path / "t").exists()
    code, _, err = run_cli(capsys, "pretrain", "--method", "jigsaw", "--data", "digits", "--out", tmp_path / "j",
                           "--device", "cpu")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "8 px is too small for a 3x3 jigsaw with gaps (9 px" in lines[0]
    assert not (tmp_path / "j").exists()


@pytest.mark.parametrize("name", list(CASES))
def test_batches_come_from_the_generator_alone(name):
    """The same generator seed gives the same batch (what exact resume needs); another seed another batch."""
    cls = get_method(name)
    shape = (3, 16, 16) if name == "colorization" else (1, 28, 28)
    spec = image_spec(shape, (0.5,) * shape[0], (0.25,) * shape[0])
    x = torch.randint(0, 256, (8, *shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))

    def batch(gen_seed, global_seed):
        method = cls(spec, parse_hparams(name, cls.Hparams, {}), "small_cnn")
        torch.manual_seed(global_seed)  # the global RNG must not matter
        return method.make_batch(x, torch.Generator().manual_seed(gen_seed))

    a, b, c = batch(7, 1), batch(7, 2), batch(8, 1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_methods_command_names_paper_and_defaults(capsys):
    for name, words in {"rotation": ["Gidaris et al. 2018", "sgd lr 0.1", "int, default 256"],
                        "relative_position": ["Doersch et al. 2015", "--gap", "default 0.5", "default 'drop'"],
                        "jigsaw": ["Noroozi & Favaro 2016", "--permutations", "default 100: size of the permutation"],
                        "colorization": ["Zhang et al. 2016", "--rebalance", "default 0.5: lambda"]}.items():
        code, out, _ = run_cli(capsys, "methods", name)
        assert code == 0 and all(w in out for w in words), out
