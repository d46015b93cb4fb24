"""Inpainting (context encoder): hide a region of the image and reconstruct it from its surroundings."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..errors import SelfSupError
from ..losses.masked import masked_mse
from ..views.masks import block_mask, center_block_params, fill_masked, random_grid_blocks
from ..views.ops import normalize, to_float
from .autoencoder import build_decoder
from .base import Method, OptimDefaults
from .hparams import setting
from .registry import register


@register
class Inpainting(Method):
    """Encoder (the backbone) + the autoencoder's decoder; the input has the region filled with the mean pixel,
    the L2 loss covers the region only (Pathak et al. 2016, eq. 1).

    Masks, by default `blocks` disjoint random cells of a `grid` x `grid` tiling (4 of 16: a quarter of the
    area), a new draw per image; or the central block (side `mask_size` of the image's, 0.5 as in the paper's
    inpainting results). Pathak et al. (sec. 3.3) found that the central mask's features latch onto its fixed
    boundary and transfer poorly, and train their features with random masks: with the central one the encoder
    sees a grey square at the same place in every pretraining image and never at evaluation. Their best
    "random region" shapes come from PASCAL VOC segmentations (not available here); random blocks are
    their other random option. Left out of the
    paper: the adversarial loss (its weight is 0.001 against 0.999 for L2; it sharpens the pixels, not the
    features) and the 7-px overlap band weighted 10x; the bottleneck is the backbone's pooled vector, not a
    channel-wise fully connected layer.
    """

    name = "inpainting"
    aliases = ("context_encoder", "context-encoder")
    paper = "Pathak et al. 2016, Context Encoders: Feature Learning by Inpainting (CVPR)"
    # The paper trains with Adam at 2e-4 (beta1 0.5, for the GAN term); L2 alone converges faster at the
    # autoencoder's 1e-3, which matters in a CPU budget of a few hundred steps.
    optimizers = {"adamw": OptimDefaults(lr=1e-3, weight_decay=0.0,
                               source="ours: the autoencoder's rate (the paper: Adam at 2e-4, beta1 0.5, for its GAN "
                                      "term, sec. 3.4)")}

    @dataclass
    class Hparams:
        mask: Literal["center", "random"] = setting("random", "'random': random disjoint blocks of a grid, a new "
                                                               "draw per image (the paper's choice for features); "
                                                               "'center': the central block",
            source="Pathak et al. 2016, sec. 3.3: random regions for feature learning (central-region features latch "
                   "onto the mask boundary)")
        mask_size: float = setting(0.5, "center: the block's side as a fraction of the image's (0.5: a quarter "
                                         "of the area, as the paper)",
            source="Pathak et al. 2016, sec. 3.3: the central block covers a quarter of the image")
        grid: int = setting(4, "random: the image is tiled grid x grid",
            source="ours: the paper describes its random blocks in words only (sec. 3.3); a 4x4 grid")
        blocks: int = setting(4, "random: how many of the grid's cells are masked per image",
            source="ours: 4 of 16 cells hide a quarter of the image, as the paper's central block does (sec. 3.3)")

        def __post_init__(self):
            if not 0 < self.mask_size < 1:
                raise ValueError(f"mask_size must be in (0, 1), got {self.mask_size}")
            if self.grid < 2 or not 1 <= self.blocks < self.grid ** 2:
                raise ValueError(f"grid must be >= 2 and blocks in [1, grid^2), got grid {self.grid}, blocks "
                                 f"{self.blocks}")

    def __init__(self, spec, hp, backbone):
        super().__init__(spec, hp, backbone)
        _, h, w = spec.shape
        if hp.mask == "random" and min(h, w) < hp.grid:
            raise SelfSupError(f"inpainting: a {hp.grid}x{hp.grid} grid needs images of at least {hp.grid} px a "
                               f"side, got {h}x{w} (lower --grid)")
        if hp.mask == "center" and (round(hp.mask_size * h) >= h or round(hp.mask_size * w) >= w):
            raise SelfSupError(f"inpainting: mask_size {hp.mask_size} hides all of a {h}x{w} image")
        self.decoder = build_decoder(self.backbone, spec.shape)

    def sample_mask(self, b: int, generator: torch.Generator, device) -> torch.Tensor:
        """(B, 1, H, W) bool, True = hidden: the central block, or random grid cells drawn from `generator`."""
        _, h, w = self.spec.shape
        if self.hp.mask == "center":
            return block_mask(h, w, *center_block_params(b, h, w, self.hp.mask_size, device))
        mask, _ = random_grid_blocks(b, h, w, self.hp.grid, self.hp.blocks, generator, device)
        return mask

    def make_batch(self, x, generator):
        """Input: the normalised image with the region set to 0 (the training mean); target: the image in
        [0, 1]; mask: B x 1 x H x W, True = hidden."""
        x01 = to_float(x)
        mask = self.sample_mask(x01.shape[0], generator, x01.device)
        context = fill_masked(normalize(x01, self.spec.mean, self.spec.std), mask, 0.0)
        return {"context": context, "target": x01, "mask": mask}

    def forward(self, batch):
        pred = self.decoder(self.backbone(batch["context"]))  # pred: B x C x H x W in [0, 1]
        mask = batch["mask"]
        loss = masked_mse(pred, batch["target"], mask)
        with torch.no_grad():
            hole = mask.float().mean()  # the masked fraction, logged so a wrong mask shows
        return loss, {"masked_frac": hole}
