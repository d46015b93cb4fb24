"""MLM training throughput: selfsup's step against Hugging Face `transformers`' BertForMaskedLM of the same size.

    pip install transformers        # for this benchmark only; selfsup does not depend on it
    python benchmarks/mlm_throughput.py --size transformer --threads 2            # the CPU default model
    python benchmarks/mlm_throughput.py --size transformer_base --device cuda --batch-size 256

Both models get the same batches of real documents (fortunes by default, tokenized by a WordPiece tokenizer
fitted on them) with the same masked positions (drawn once by selfsup's masking, `--masking`, `--mask-p`). One
step = forward + backward + gradient clipping at 1.0 + AdamW step. BertForMaskedLM gets each batch the way
Hugging Face's collators pad it, to the batch's longest document with an attention mask, and computes its
vocabulary projection at every position (its loss ignores the unmasked ones); selfsup packs the documents
(`--packing`, default per-document attention: the same loss, tests/test_mlm_packing.py) and projects only the
masked positions. Same size: layers, width, heads, MLP width (4x), vocabulary, sequence length; no dropout in
either (selfsup's encoder has none). They differ in layout: BERT is post-norm with token-type embeddings and an
embedding LayerNorm, selfsup pre-norm (parameter counts are printed).

Throughput is real (non-padding) tokens a second over the timed steps, after warm-up steps; the two models run
one after the other in one process on the same machine. Prints JSON. Time it on a quiet machine.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from selfsup.data import load_data, spec_of  # noqa: E402
from selfsup.data.tokenize import PAD_ID, as_tokens, train_tokenizer  # noqa: E402
from selfsup.methods.mlm import MLM  # noqa: E402
from selfsup.models.transformer import SIZES  # noqa: E402
from selfsup.views.masking import IGNORE  # noqa: E402


def batches(data, method, n_steps: int, batch_size: int, seed: int) -> list[dict]:
    """n_steps masked batches (unpacked, cut to their longest document), drawn once and shared by both models."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_steps):
        ids = data.x[torch.randint(0, len(data), (batch_size,), generator=g)]
        out.append(method.make_batch(ids, g))
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step, work: list, warmup: int, device: torch.device) -> float:
    """Seconds for the steps after the first `warmup` (which are run, untimed)."""
    for b in work[:warmup]:
        step(b)
    sync(device)
    t0 = time.perf_counter()
    for b in work[warmup:]:
        step(b)
    sync(device)
    return time.perf_counter() - t0


def ours(spec, args, device: torch.device):
    torch.manual_seed(0)
    method = MLM(spec, MLM.Hparams(mask_p=args.mask_p, masking=args.masking, packing=args.packing), args.size)
    method.to(device).train()
    opt = torch.optim.AdamW(method.parameters(), lr=1e-4, weight_decay=0.01, fused=device.type == "cuda")

    def step(b):
        keep = b["inputs"] != PAD_ID
        if args.packing != "none":
            from selfsup.views.packing import pack
            b = pack(b, keep, args.packing, fill={"inputs": PAD_ID, "labels": IGNORE})
        with torch.autocast(device.type, torch.bfloat16, enabled=args.bf16):
            loss, _ = method(b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(method.parameters(), 1.0)
        opt.step()
        return loss
    return method, step


def bert(spec, args, device: torch.device):
    from transformers import BertConfig, BertForMaskedLM

    dim, depth, heads = SIZES[args.size]
    cfg = BertConfig(vocab_size=spec.vocab_size, hidden_size=dim, num_hidden_layers=depth, num_attention_heads=heads,
                     intermediate_size=4 * dim, max_position_embeddings=spec.shape[0], type_vocab_size=1,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=PAD_ID)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = BertForMaskedLM(cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, fused=device.type == "cuda")

    def step(b):
        with torch.autocast(device.type, torch.bfloat16, enabled=args.bf16):
            loss = model(input_ids=b["inputs"], attention_mask=(b["inputs"] != PAD_ID).long(), labels=b["labels"]).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss
    return model, step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="fortunes", help="a text source (default fortunes)")
    ap.add_argument("--size", default="transformer", choices=list(SIZES), help="selfsup's backbone size")
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=30, help="timed steps per model")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    defaults = MLM.Hparams()  # MLM's own defaults unless given
    ap.add_argument("--masking", default=defaults.masking, choices=("token", "whole_word", "span"))
    ap.add_argument("--mask-p", type=float, default=defaults.mask_p)
    ap.add_argument("--packing", default=defaults.packing, choices=("none", "documents", "full_sentences"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast for both (the GPU default of selfsup)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    text = load_data(args.data)
    data = as_tokens(text, train_tokenizer(text.texts, args.vocab_size, args.seq_len))
    spec = spec_of(data)
    masker = MLM(spec, MLM.Hparams(mask_p=args.mask_p, masking=args.masking, packing="none"), args.size)
    work = [{k: v.to(device) for k, v in b.items()}
            for b in batches(data, masker, args.warmup + args.steps, args.batch_size, args.seed)]
    real = sum(int((b["inputs"] != PAD_ID).sum()) for b in work[args.warmup:])
    padded = sum(b["inputs"].numel() for b in work[args.warmup:])

    result = dict(data=args.data, size=args.size, width_layers_heads=SIZES[args.size], vocab=spec.vocab_size,
                  seq_len=args.seq_len, batch_size=args.batch_size, masking=args.masking, mask_p=args.mask_p,
                  packing=args.packing, device=str(device), bf16=args.bf16, threads=torch.get_num_threads(),
                  timed_steps=args.steps, real_tokens=real, padded_tokens=padded, torch=torch.__version__)
    with torch.no_grad():  # the packed loss is the unpacked loss (per-document attention), checked on batch 0
        model, _ = ours(spec, args, device)
        b = work[0]
        keep = b["inputs"] != PAD_ID
        from selfsup.views.packing import pack
        packed = pack(b, keep, "documents", fill={"inputs": PAD_ID, "labels": IGNORE})
        result["packed_loss_equals_padded"] = bool(torch.allclose(model(b)[0], model(packed)[0], atol=1e-4))
    for name, build in (("selfsup", ours), ("transformers_bert", bert)):
        model, step = build(spec, args, device)
        seconds = timed(step, work, args.warmup, device)
        result[name] = dict(tokens_per_s=round(real / seconds, 1), ms_per_step=round(1000 * seconds / args.steps, 2),
                            params=sum(p.numel() for p in model.parameters()))
        del model, step
    import transformers

    result["transformers"] = transformers.__version__
    result["speedup"] = round(result["selfsup"]["tokens_per_s"] / result["transformers_bert"]["tokens_per_s"], 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
