"""Masked language modelling: masking statistics, learning from context, the encoder evaluation gets, resume."""
import json

import numpy as np
import pytest
import torch

from selfsup import Config, pretrain
from selfsup.cli import main
from selfsup.data import DataSpec
from selfsup.data.tokenize import CLS_ID, MASK_ID, NUM_SPECIAL, PAD_ID, SEP_ID, UNK_ID
from selfsup.methods.mlm import MLM
from selfsup.models.transformer import TransformerEncoder
from selfsup.rundir import RunPaths, load_run
from selfsup.train.checkpoint import load_checkpoint
from selfsup.views.masking import IGNORE, KEEP, MASK, RANDOM, mask_tokens, random_mask_params, random_mask_tokens

VOCAB = 60


@pytest.fixture(autouse=True)
def _one_thread():
    """One thread: these models are tiny, and on a shared CPU a second thread's spin-waits cost more than it gives."""
    torch.set_num_threads(1)


def token_batch(n=512, length=48, seed=0):
    """[CLS] content [SEP] [PAD]..., content ids in [NUM_SPECIAL, VOCAB) with some [UNK]s among them."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(NUM_SPECIAL, VOCAB, (n, length), generator=g)
    ids[torch.rand(n, length, generator=g) < 0.05] = UNK_ID
    lengths = torch.randint(4, length + 1, (n,), generator=g)
    pos = torch.arange(length)[None, :]
    ids[:, 0] = CLS_ID
    ids[pos == (lengths[:, None] - 1)] = SEP_ID
    ids[pos >= lengths[:, None]] = PAD_ID
    return ids


def test_mask_tokens_applies_its_parameters():
    ids = torch.tensor([[1, 10, 11, 12, 13, 2, 0]])
    selected = torch.tensor([[False, True, True, True, False, False, False]])
    action = torch.tensor([[MASK, MASK, RANDOM, KEEP, RANDOM, MASK, MASK]])
    random_ids = torch.full_like(ids, 42)
    inputs, labels = mask_tokens(ids, selected, action, random_ids, MASK_ID)
    assert inputs.tolist() == [[1, MASK_ID, 42, 12, 13, 2, 0]]
    assert labels.tolist() == [[IGNORE, 10, 11, 12, IGNORE, IGNORE, IGNORE]]


def test_masking_statistics_over_many_draws():
    """15% of maskable tokens selected (within 0.002, ~6 sd), of those 80/10/10 (within 0.005, ~5 sd)."""
    ids = token_batch()
    maskable = ids >= NUM_SPECIAL
    g = torch.Generator().manual_seed(0)
    n_maskable = n_selected = 0
    counts = torch.zeros(3)
    for _ in range(40):
        p = random_mask_params(ids, g, NUM_SPECIAL, VOCAB)
        inputs, labels = mask_tokens(ids, p["selected"], p["action"], p["random_ids"], MASK_ID)
        sel = p["selected"]
        assert not (sel & ~maskable).any()  # no special, [UNK] or pad token is ever selected
        assert (labels[~sel] == IGNORE).all() and torch.equal(labels[sel], ids[sel])
        assert torch.equal(inputs[~sel], ids[~sel])
        assert (inputs[sel & (p["action"] == MASK)] == MASK_ID).all()
        replaced = inputs[sel & (p["action"] == RANDOM)]
        assert (replaced >= NUM_SPECIAL).all() and (replaced < VOCAB).all()  # never a special token or pad
        assert torch.equal(inputs[sel & (p["action"] == KEEP)], ids[sel & (p["action"] == KEEP)])
        n_maskable += int(maskable.sum())
        n_selected += int(sel.sum())
        counts += torch.bincount(p["action"][sel], minlength=3).float()
    share = counts / counts.sum()
    assert abs(n_selected / n_maskable - 0.15) < 0.002
    assert abs(share[MASK] - 0.8) < 0.005 and abs(share[RANDOM] - 0.1) < 0.005 and abs(share[KEEP] - 0.1) < 0.005


def test_masking_is_reproducible_from_the_generator():
    ids = token_batch(64)
    a = random_mask_tokens(ids, torch.Generator().manual_seed(3), NUM_SPECIAL, VOCAB, MASK_ID)
    b = random_mask_tokens(ids, torch.Generator().manual_seed(3), NUM_SPECIAL, VOCAB, MASK_ID)
    c = random_mask_tokens(ids, torch.Generator().manual_seed(4), NUM_SPECIAL, VOCAB, MASK_ID)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[1], c[1])


K = 16  # content tokens of the planted rule


def planted(n=512, length=14, seed=0):
    """[CLS] x1 .. x12 [SEP]: x1 uniform, then each token the cyclic successor of its left neighbour."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, K, (n, 1), generator=g)
    body = (start + torch.arange(length - 2)[None, :]) % K + NUM_SPECIAL
    return torch.cat([torch.full((n, 1), CLS_ID), body, torch.full((n, 1), SEP_ID)], 1)


def train_mlm(backbone: TransformerEncoder, ids, steps=300, seed=0, lr=3e-3):
    """Train MLM on `ids` with the method's own make_batch/forward; masked accuracy on fresh masks after."""
    torch.manual_seed(seed)
    spec = DataSpec("tokens", (ids.shape[1],), vocab_size=NUM_SPECIAL + K, pad_id=PAD_ID)
    method = MLM(spec, MLM.Hparams(mask_p=0.15, masking="token"), "transformer_tiny")  # BERT's; packed (default)
    method.backbone = backbone
    opt = torch.optim.AdamW(method.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        x = ids[torch.randint(0, len(ids), (64,), generator=g)]
        with torch.no_grad():
            batch = method.make_batch(x, g)
        loss, _ = method(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    method.eval()
    with torch.no_grad():
        accs = [method(method.make_batch(ids, torch.Generator().manual_seed(100 + i)))[1]["mlm_acc"] for i in range(5)]
    return float(torch.stack(accs).mean())


def test_mlm_learns_a_rule_only_context_reveals():
    """With context the masked token follows from its neighbour; without it nothing beats this bound: 80% of the
    selected inputs are [MASK] (best guess: the most frequent token, p_max), and guessing the input itself is right
    for at most the 10% kept plus the 10% random (<= 0.8 p_max + 0.2)."""
    ids = planted()
    content = ids[ids >= NUM_SPECIAL]
    p_max = torch.bincount(content).max().item() / content.numel()
    bound = 0.8 * p_max + 0.2
    assert bound < 0.3
    spec = dict(vocab_size=NUM_SPECIAL + K, max_len=ids.shape[1], dim=32, heads=2)
    torch.manual_seed(0)
    with_context = train_mlm(TransformerEncoder(**spec, depth=2), ids)
    torch.manual_seed(0)
    blind = train_mlm(TransformerEncoder(**spec, depth=0), ids)  # no attention: each position sees itself only
    assert with_context > 0.9, with_context
    assert blind <= bound + 0.03, (blind, bound)


def write_corpus(path, n=160, seed=0):
    """label<TAB>text, two topics with words of their own plus shared ones."""
    g = torch.Generator().manual_seed(seed)
    topics = {"sea": "wave boat fish salt tide shell", "sky": "cloud bird wind star moon rain"}
    shared = "the a of and very some".split()
    lines = []
    for i in range(n):
        label = "sea" if i % 2 else "sky"
        words = topics[label].split() + shared
        idx = torch.randint(0, len(words), (int(torch.randint(4, 14, (1,), generator=g)),), generator=g)
        lines.append(f"{label}\t{' '.join(words[j] for j in idx.tolist())}")
    path.write_text("\n".join(lines) + "\n")
    return path


def cfg(tmp_path, data, **kw):
    base = dict(method="mlm", data=str(data), out=str(tmp_path / "run"), device="cpu", backbone="transformer_tiny",
                batch_size=32, epochs=3, knn_every=1, warmup_epochs=1.0, vocab_size=100, seq_len=16)
    base.update(kw)
    return Config(**base)


def test_resume_is_exact_for_mlm(tmp_path, pretrain_until):
    data = write_corpus(tmp_path / "c.tsv")
    full = pretrain(cfg(tmp_path / "a", data), progress=False)
    pretrain_until(cfg(tmp_path / "b", data), 1)
    resumed = pretrain(Config(out=str(tmp_path / "b" / "run"), epochs=3), resume=True, progress=False)
    a, b = load_checkpoint(RunPaths(full).last), load_checkpoint(RunPaths(resumed).last)
    assert a["epoch"] == b["epoch"] == 3 and a["step"] == b["step"] and a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    recs = [json.loads(line) for line in open(RunPaths(resumed).metrics)]
    assert [r["epoch"] for r in recs] == [1, 2, 3]
    assert all(0 <= r["logs"]["mlm_acc"] <= 1 and r["logs"]["perplexity"] >= 1 for r in recs)
    assert recs[-1]["logs"]["perplexity"] < recs[0]["logs"]["perplexity"]  # it learns


def test_evaluation_gets_the_pretrained_encoder_without_the_mlm_head(tmp_path):
    run_dir = pretrain(cfg(tmp_path, write_corpus(tmp_path / "c.tsv"), epochs=2, knn_every=0), progress=False)
    run = load_run(run_dir)
    ckpt = load_checkpoint(RunPaths(run_dir).last)["model"]
    enc_state = run.encoder.state_dict()
    assert enc_state.keys() == {k for k in ckpt if k.startswith("backbone.")}  # the head stays behind
    assert any(k.startswith("head.") for k in ckpt)
    for k, v in enc_state.items():
        assert torch.equal(v, ckpt[k]), k
    fresh = run.random_encoder(seed=1).state_dict()
    assert not torch.equal(fresh["backbone.tok.weight"], enc_state["backbone.tok.weight"])
    ids = torch.tensor([[CLS_ID, 7, 8, 9, SEP_ID, PAD_ID, PAD_ID, PAD_ID] + [PAD_ID] * 8])
    tokens = run.encoder.backbone.forward_features(ids)
    assert tokens["tokens"].shape == (1, 16, run.encoder.feature_dim)
    torch.testing.assert_close(run.encoder(ids), tokens["tokens"][0, :5].mean(0, keepdim=True))  # mean over non-pad


def test_text_runs_pretrain_eval_embed_through_the_cli(tmp_path, capsys):
    data = write_corpus(tmp_path / "c.tsv", n=200)
    run = tmp_path / "run"
    code = main(["pretrain", "--method", "mlm", "--data", str(data), "--out", str(run), "--device", "cpu",
                 "--backbone", "transformer_tiny", "--epochs", "2", "--batch-size", "32", "--vocab-size", "100",
                 "--seq-len", "16", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert (run / "tokenizer.json").is_file()
    code = main(["eval", str(run), "--fractions", "50%,100%", "--finetune-max-steps", "10", "--k", "20",
                 "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    rows = [ln for ln in out.splitlines() if ln.startswith("| ")][1:]
    assert {ln.split("|")[1].strip() for ln in rows} == {"mlm (ours)", "random init", "TF-IDF"}
    tfidf = [ln for ln in rows if "TF-IDF" in ln]
    assert all(ln.split("|")[-2].strip() == "—" and float(ln.split("|")[5].split()[0].strip("*")) > 90
               for ln in tfidf)  # no fine-tuning of TF-IDF; its topic words make this easy
    assert "adamw" in out
    code = main(["embed", str(run), "--data", str(data), "--out", str(tmp_path / "e.npz")])
    assert code == 0
    saved = np.load(tmp_path / "e.npz")
    assert saved["features"].shape == (200, 32) and saved["labels"].shape == (200,)


def test_eval_of_unlabelled_text_is_a_one_line_error(tmp_path, capsys):
    p = tmp_path / "plain.txt"
    p.write_text("\n".join(f"line {i} of some text" for i in range(40)) + "\n")
    run = tmp_path / "run"
    assert main(["pretrain", "--method", "mlm", "--data", str(p), "--out", str(run), "--device", "cpu",
                 "--backbone", "transformer_tiny", "--epochs", "1", "--vocab-size", "60", "--seq-len", "8",
                 "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--no-progress"]) == 2
    assert "has no labels; evaluation needs labelled data" in capsys.readouterr().err


def test_mlm_selects_unk_like_any_word_and_never_the_other_specials():
    """BERT masks [UNK] like any word: 15% of the [UNK]s are selected, with label [UNK]; [PAD] [CLS] [SEP] [MASK]
    never are, and a selected token becomes [MASK] or a word or [UNK], never another special token."""
    ids = token_batch()
    spec = DataSpec("tokens", (ids.shape[1],), vocab_size=VOCAB, pad_id=PAD_ID)
    method = MLM(spec, MLM.Hparams(mask_p=0.15, masking="token", packing="none"), "transformer_tiny")
    g = torch.Generator().manual_seed(0)
    assert (ids[:, -1] != PAD_ID).any()  # some row is full: the unpacked batch keeps every column
    unk = ids == UNK_ID
    never = ids < UNK_ID  # [PAD] [CLS] [SEP] [MASK]
    n_unk = n_unk_selected = 0
    for _ in range(40):
        batch = method.make_batch(ids, g)
        selected = batch["labels"] != IGNORE
        assert not (selected & never).any()
        replaced = batch["inputs"][selected]
        assert ((replaced == MASK_ID) | (replaced >= UNK_ID)).all()  # [MASK], or a word or [UNK] (kept or random)
        assert (batch["labels"][selected & unk] == UNK_ID).all()
        n_unk += int(unk.sum())
        n_unk_selected += int((selected & unk).sum())
    assert n_unk > 20000 and abs(n_unk_selected / n_unk - 0.15) < 0.01  # ~4 sd


@pytest.mark.parametrize("clip", [1.0, None])
def test_the_loop_clips_mlm_gradients_at_berts_norm(tmp_path, monkeypatch, clip):
    """With MLM's default grad_clip 1.0 every optimizer step sees a global gradient norm of at most 1 although
    the raw norms exceed it; with grad_clip None the raw norms reach the optimizer."""
    seen = []
    real_step = torch.optim.AdamW.step

    def step(self, *a, **k):
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        seen.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    data = write_corpus(tmp_path / "c.tsv")
    pretrain(cfg(tmp_path, data, epochs=2, knn_every=0, method_args={"grad_clip": clip}), progress=False)
    assert len(seen) >= 6
    if clip is None:
        assert max(seen) > 1.5, seen  # the raw norms: clipping at 1.0 has work to do
    else:
        assert max(seen) <= 1.0 + 1e-4, seen
    assert MLM.Hparams().grad_clip == 1.0
