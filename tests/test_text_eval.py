"""Text evaluation at 1%, 10% and 100% of the labels: every row (ours, random init, TF-IDF) has its k and L2
chosen on each fraction's own labelled subset, TF-IDF included; fine-tuning runs for both encoders (AdamW, ours
from its probe, random init from a fresh head) and never for TF-IDF."""
import torch

from selfsup.data import DataSpec
from selfsup.data.tokenize import PAD_ID, encode, train_tokenizer
from selfsup.evaluate import report, tuning
from selfsup.data.splits import class_balanced_subset
from selfsup.evaluate.tfidf import TFIDF_ROW
from selfsup.models import Encoder
from selfsup.models.transformer import TransformerEncoder

TOPICS = {"sea": "wave boat fish salt tide shell", "sky": "cloud bird wind star moon rain",
          "town": "road shop bell door lamp roof"}


def corpus(n: int, seed: int) -> tuple[list[str], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shared = "the a of and very some".split()
    texts, labels = [], []
    for i in range(n):
        c = i % len(TOPICS)
        words = list(TOPICS.values())[c].split() + shared
        idx = torch.randint(0, len(words), (int(torch.randint(4, 12, (1,), generator=g)),), generator=g)
        texts.append(" ".join(words[j] for j in idx.tolist()))
        labels.append(c)
    return texts, torch.tensor(labels)


def test_every_text_row_is_tuned_on_each_fractions_own_labels_and_both_encoders_fine_tune(monkeypatch):
    torch.set_num_threads(1)
    train_texts, train_y = corpus(1500, 0)
    test_texts, test_y = corpus(300, 1)
    tok = train_tokenizer(train_texts, 60, 14)
    train_x, test_x = encode(tok, train_texts), encode(tok, test_texts)
    spec = DataSpec("tokens", (14,), vocab_size=tok.get_vocab_size(), pad_id=PAD_ID)

    def encoder(seed):
        torch.manual_seed(seed)
        return Encoder(TransformerEncoder(spec.vocab_size, 14, PAD_ID, dim=16, depth=1, heads=2), spec)

    chosen, tuned = [], []  # (rows of the labelled subset given to choose_l2 / choose_k)
    for name, log in (("choose_l2", chosen), ("choose_k", tuned)):
        real = getattr(tuning, name)
        monkeypatch.setattr(tuning, name, lambda f, y, *a, _real=real, _log=log, **k: (_log.append(len(y)),
                                                                                          _real(f, y, *a, **k))[1])
    starts = []
    real_ft = report.finetune
    monkeypatch.setattr(report, "finetune", lambda *a, **k: (starts.append(
        (len(a[1]), k["optimizer"], k["probe_l2"] is not None, k["lr"])), real_ft(*a, **k))[1])
    fractions = (0.01, 0.1, 1.0)
    result = report.evaluate_encoder(encoder(0), lambda: encoder(1), train_x, train_y, test_x, test_y, 3, "cpu",
                                     kind="tokens", fractions=fractions, raw=(train_texts, test_texts),
                                     progress=False, finetune_max_steps=3)
    sizes = [int(class_balanced_subset(train_y, f, 0).numel()) for f in fractions]
    assert sizes == [15, 150, 1500]
    # ours, random init and TF-IDF: L2 and k chosen once per fraction each, on exactly that fraction's labels
    assert sorted(chosen) == sorted(tuned) == sorted(sizes * 3)
    rows = {(r["features"], r["fraction"]): r for r in result["results"]}
    assert {row for row, _ in rows} == {"selfsup", "random init", TFIDF_ROW}
    for f, n in zip(fractions, sizes):
        assert rows[(TFIDF_ROW, f)]["finetune"] is None and rows[(TFIDF_ROW, f)]["linear"] is not None
        assert rows[(TFIDF_ROW, f)]["knn_tuned"] is not None and rows[(TFIDF_ROW, f)]["labels"] == n
    assert rows[(TFIDF_ROW, 1.0)]["linear"] > 0.95  # topic words: the baseline is strong, as on real text
    # Fine-tuning: both encoders at every fraction, AdamW; ours from its probe (LP-FT), random init from scratch
    assert sorted(starts) == sorted([(n, "adamw", True, 3e-4) for n in sizes]
                                    + [(n, "adamw", False, 1e-3) for n in sizes])
