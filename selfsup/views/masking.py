"""BERT's token masking (Devlin et al. 2019, section 3.1) as a deterministic op plus a `random_*` sampler; whole-word
and span masking (SpanBERT) as a second sampler, `unit_mask_params`, of the same op's parameters.

Of the maskable tokens (not special, not padding) each is selected with probability `p` (15%); a selected
token becomes [MASK] with probability 0.8, a random non-special token with 0.1, and stays unchanged with 0.1.
The loss is taken on the selected positions only: their labels are the original ids, -100 (ignored by
F.cross_entropy) everywhere else. All draws come from the passed generator on the batch's device, with no
per-sample Python loop and no device sync, so a resumed run draws the same masks.
"""
from __future__ import annotations

import torch

IGNORE = -100  # F.cross_entropy's default ignore_index
MASK, RANDOM, KEEP = 0, 1, 2  # what happens to a selected token


def mask_tokens(ids: torch.Tensor, selected: torch.Tensor, action: torch.Tensor, random_ids: torch.Tensor,
                mask_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels) for explicit parameters, all B x L: `selected` bool, `action` in {MASK, RANDOM, KEEP},
    `random_ids` the replacement wherever action is RANDOM. Unselected positions keep their id, label -100."""
    labels = ids.masked_fill(~selected, IGNORE)
    inputs = torch.where(selected & (action == MASK), torch.full_like(ids, mask_id), ids)
    inputs = torch.where(selected & (action == RANDOM), random_ids, inputs)
    return inputs, labels


def random_mask_params(ids: torch.Tensor, generator: torch.Generator, num_special: int, vocab_size: int,
                       p: float = 0.15, p_mask: float = 0.8, p_random: float = 0.1) -> dict[str, torch.Tensor]:
    """Draw the parameters of `mask_tokens` for ids B x L: tokens with id < num_special (padding and the other
    special tokens) are never selected; random replacements are drawn from the non-special ids only, so a
    replacement never introduces padding (which would change the attention mask) or another special token."""
    dev = generator.device
    u = torch.rand(ids.shape, generator=generator, device=dev).to(ids.device)
    selected = (u < p) & (ids >= num_special)
    a = torch.rand(ids.shape, generator=generator, device=dev).to(ids.device)
    action = torch.where(a < p_mask, MASK, torch.where(a < p_mask + p_random, RANDOM, KEEP))
    random_ids = torch.randint(num_special, vocab_size, ids.shape, generator=generator, device=dev).to(ids.device)
    return dict(selected=selected, action=action, random_ids=random_ids)


def random_mask_tokens(ids: torch.Tensor, generator: torch.Generator, num_special: int, vocab_size: int,
                       mask_id: int, p: float = 0.15, p_mask: float = 0.8,
                       p_random: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """`mask_tokens` with parameters drawn by `random_mask_params`: (inputs, labels), both B x L int64."""
    params = random_mask_params(ids, generator, num_special, vocab_size, p, p_mask, p_random)
    return mask_tokens(ids, params["selected"], params["action"], params["random_ids"], mask_id)


# Whole-word and span masking: the selection is made of whole units (words, spans of words) instead of single
# tokens, chosen in a random order until a budget of tokens is spent, as BERT's reference code does for whole
# words (google-research/bert, create_pretraining_data.py: shuffled candidate words, added while they fit) and
# SpanBERT for spans (Joshi et al. 2020, sec. 3.1).
UNITS = ("token", "whole_word", "span")


def word_starts(ids: torch.Tensor, maskable: torch.Tensor, continues: torch.Tensor) -> torch.Tensor:
    """B x L bool: the maskable tokens that begin a word, i.e. that are not a WordPiece continuation ("##ing").
    `continues`: vocab-size bool, True for the continuation ids of the run's tokenizer."""
    return maskable & ~continues[ids]


def span_lengths_pmf(p: float, longest: int) -> torch.Tensor:
    """SpanBERT's span lengths in words: Geometric(p) on 1..longest, renormalised (p=0.2, 10: mean 3.8 words)."""
    k = torch.arange(1, longest + 1, dtype=torch.float64)
    pmf = p * (1 - p) ** (k - 1)
    return (pmf / pmf.sum()).float()


def span_starts(words: torch.Tensor, generator: torch.Generator, p: float = 0.2, longest: int = 10) -> torch.Tensor:
    """B x L bool: the word starts (`words`) that begin a span, when each row's words are cut into consecutive
    spans of lengths drawn from `span_lengths_pmf` (Joshi et al. 2020, SpanBERT, sec. 3.1)."""
    b, n = words.shape
    dev = generator.device
    lengths = torch.multinomial(span_lengths_pmf(p, longest).to(dev), b * n, replacement=True,
                                generator=generator).view(b, n).to(words.device) + 1  # lengths: B x L, in words
    first = (lengths.cumsum(1) - lengths + 1).clamp(max=n + 1)  # 1-based word number each span starts at
    is_first = torch.zeros(b, n + 2, dtype=torch.bool, device=words.device).scatter_(1, first, True)
    number = words.long().cumsum(1)  # number: B x L, the 1-based word each position is in (0 before the first)
    return words & is_first.gather(1, number)


def budget_select(maskable: torch.Tensor, starts: torch.Tensor, rate: float,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(selected B x L bool, unit B x L int64): whole units chosen until each row's budget is spent.

    A unit is a start and the maskable tokens after it up to the next start. Units are taken in a random order
    while they fit in the row's budget, rate x its maskable tokens; the one that crosses it is taken with
    probability (budget left) / (its length), so every row selects `rate` of its tokens in expectation (up to one
    unit either way), and long units are not favoured or avoided. `unit` numbers each position's unit (for
    drawing one replacement action per span).
    """
    b, n = maskable.shape
    unit = (starts.long().cumsum(1) - 1).clamp(min=0)  # unit: B x L, at most L units a row
    length = torch.zeros(b, n, dtype=torch.long, device=maskable.device).scatter_add_(1, unit, maskable.long())
    score = torch.rand(b, n, generator=generator, device=generator.device).to(maskable.device)
    order = torch.where(length > 0, score, 2.0).argsort(1)  # a random order of the units, empty ones last
    size = length.gather(1, order)  # size: B x U, unit lengths in that order
    end = size.cumsum(1)
    begin = end - size
    budget = rate * maskable.sum(1, keepdim=True)  # budget: B x 1, in tokens
    coin = torch.rand(b, 1, generator=generator, device=generator.device).to(maskable.device)  # one crossing a row
    take = (size > 0) & ((end <= budget) | ((begin < budget) & (coin * size < budget - begin)))
    chosen = torch.zeros_like(take).scatter_(1, order, take)  # chosen: B x U, by unit number
    return chosen.gather(1, unit) & maskable, unit


def unit_mask_params(ids: torch.Tensor, generator: torch.Generator, num_special: int, vocab_size: int,
                     continues: torch.Tensor, unit: str = "whole_word", p: float = 0.15, p_mask: float = 0.8,
                     p_random: float = 0.1, span_p: float = 0.2, span_longest: int = 10) -> dict[str, torch.Tensor]:
    """The parameters of `mask_tokens` for whole-word ("whole_word") or span ("span") masking of ids B x L.

    Special tokens and padding (id < num_special) are never selected or drawn as replacements. Whole words: the
    80/10/10 action is drawn per token, as in BERT's whole-word masking; spans: once per span, as in SpanBERT
    ("at the span level"). With no continuation ids (`continues` all False) every token is a word.
    """
    if unit not in UNITS[1:]:
        raise ValueError(f"unit must be one of {UNITS[1:]}, got {unit!r}")
    dev = generator.device
    maskable = ids >= num_special
    starts = word_starts(ids, maskable, continues)
    if unit == "span":
        starts = span_starts(starts, generator, span_p, span_longest)
    selected, unit_of = budget_select(maskable, starts, p, generator)
    a = torch.rand(ids.shape, generator=generator, device=dev).to(ids.device)
    if unit == "span":
        a = a.gather(1, unit_of)  # one draw per span: the draw at index u decides span u
    action = torch.where(a < p_mask, MASK, torch.where(a < p_mask + p_random, RANDOM, KEEP))
    random_ids = torch.randint(num_special, vocab_size, ids.shape, generator=generator, device=dev).to(ids.device)
    return dict(selected=selected, action=action, random_ids=random_ids)
