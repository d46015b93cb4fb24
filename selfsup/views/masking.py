"""BERT's token masking (Devlin et al. 2019, section 3.1) as a deterministic op plus a `random_*` sampler.

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
