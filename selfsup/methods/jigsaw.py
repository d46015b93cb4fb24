"""Jigsaw puzzles: which permutation of a fixed set shuffled the 3x3 tiles? (Noroozi & Favaro 2016)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SelfSupError
from ..losses import top1
from ..models.backbones import MLPEncoder
from ..models.heads import mlp_head
from ..views.ops import normalize, random_grayscale, to_float
from ..views.jigsaw import hamming_permutations, min_hamming, puzzle_layout, random_jigsaw, standardize_tiles
from ..views.pretext import resize_patches
from .base import Method, OptimDefaults
from .hparams import setting
from .registry import register
from .relative_position import default_patch_px


@register
class Jigsaw(Method):
    """The context-free network: the shared backbone on each of the 9 tiles, a per-tile fc, the 9 tile codes
    concatenated in shuffled order, and an MLP classifying which permutation of the set was applied.

    The permutation set (`permutations` buffer, N x 9) is generated deterministically by greedy max-min
    Hamming selection and lives in the state dict, so every checkpoint carries the exact set it was trained
    with. Guards against shortcuts, as in the paper: tiles cover `tile` of their grid cell at a random offset,
    with a gap of at least `gap` of a cell (>= 1 px) kept between every two tiles for every offset drawn (no
    edges to join; ``puzzle_layout``); each colour channel of a tile shifted by 0-`channel_shift` px and RGB
    tiles grayscaled with probability `gray_p` (against chromatic aberration, the paper's channel jitter and
    the authors' later code); each tile standardised on its own (no brightness/contrast matching). Tiles of
    small images are 6-18 px and are resized to `tile_px` for the backbone.
    """

    name = "jigsaw"
    paper = "Noroozi & Favaro 2016, Unsupervised Learning of Visual Representations by Solving Jigsaw Puzzles (ECCV)"
    optimizers = {"adamw": OptimDefaults(lr=1e-3, weight_decay=0.05,
                               source="ours: a common AdamW rate for small CNNs, not tuned (the paper trains with "
                                      "SGD)"),
                  "sgd": OptimDefaults(lr=0.1, weight_decay=5e-4,
                             source="ours: 0.1 per 256, not tuned (the paper: SGD at lr 0.01, sec. 3.3)")}

    @dataclass
    class Hparams:
        permutations: int = setting(100, "size of the permutation set = number of classes (the paper: 100-1000)",
            source="Noroozi & Favaro 2016, sec. 3.2 (100-1000 permutations; 1000 was their best, 100 fits a small CPU"
                   " budget)")
        perm_seed: int = setting(0, "seed of the first permutation of the greedy max-min-Hamming set",
            source="ours: any seed; the paper's greedy max-min-Hamming selection (sec. 3.2) starts from a random "
                   "permutation")
        tile: float = setting(0.75, "tile side as a fraction of its grid cell (the paper: 64/75); the rest is a "
                                    "random gap",
            source="Noroozi & Favaro 2016, sec. 3.3: 64 px tiles in 75 px cells")
        gap: float = setting(0.1, "smallest gap between two tiles, in cells (at least 1 px); kept for every "
                                   "offset drawn",
            source="ours: the smallest gap that keeps tiles apart at 28-32 px (the paper's 11 px margin, sec. 3.3, "
                   "cannot fit there)")
        channel_shift: int = setting(2, "RGB: each channel of a tile moves by 0 to this many px (the paper: 0-2, "
                                        "against chromatic aberration); 1-channel images: none",
            source="Noroozi & Favaro 2016, sec. 3.3: each colour channel jittered by 0-2 px against chromatic "
                   "aberration")
        tile_px: int | None = setting(None, "side the tiles are resized to (None: half the image side, >= 16)",
            source="ours: not tuned (the paper feeds 64 px tiles)")
        tile_dim: int = setting(128, "width of each tile's code before concatenation (the paper's fc6: 512)",
            source="ours: scaled down from the paper's fc6 of 512 (Fig. 3) for a small CNN")
        hidden: int = setting(512, "hidden width of the permutation classifier (the paper's fc7: 4096)",
            source="ours: scaled down from the paper's fc7 of 4096 (Fig. 3)")
        gray_p: float = setting(0.3, "probability of grayscaling an RGB puzzle",
            source="ours: not tuned (Noroozi et al.'s later code grayscales some tiles against chromatic aberration)")

        def __post_init__(self):
            if not 2 <= self.permutations <= 362880:
                raise ValueError("permutations must be between 2 and 9! = 362880")
            if not 0 < self.tile <= 1 or self.tile_dim < 1 or self.hidden < 1 or not 0 <= self.gray_p <= 1:
                raise ValueError("tile must be in (0, 1], tile_dim and hidden >= 1, gray_p in [0, 1]")
            if self.tile_px is not None and self.tile_px < 4:
                raise ValueError("tile_px must be >= 4")
            if not 0 <= self.gap < 1 or self.channel_shift < 0:
                raise ValueError("gap must be in [0, 1) and channel_shift >= 0")

    @classmethod
    def layout_for(cls, shape, hp):
        """The puzzle of (C, H, W) images, or a one-line error when they are too small for one."""
        try:
            return puzzle_layout(shape[1], shape[2], shape[0], hp.tile, hp.gap, hp.channel_shift)
        except ValueError as e:
            raise SelfSupError(f"{cls.name}: {e}") from None

    @classmethod
    def check_data(cls, data, hp):
        cls.layout_for(tuple(data.x.shape[1:]), hp)

    def __init__(self, spec, hp, backbone):
        super().__init__(spec, hp, backbone)
        if isinstance(self.backbone, MLPEncoder):
            raise SelfSupError(f"{self.name} feeds patches smaller than the image to the backbone: choose a conv "
                               "backbone (small_cnn, resnet18, resnet50), not mlp")
        self.puzzle = self.layout_for(spec.shape, hp)
        self.register_buffer("permutations", hamming_permutations(hp.permutations, 9, hp.perm_seed))
        self.tile_px = hp.tile_px or default_patch_px(min(spec.shape[1:]))
        self.tile_fc = nn.Sequential(nn.Linear(self.backbone.feature_dim, hp.tile_dim), nn.ReLU(inplace=True))
        self.head = mlp_head(9 * hp.tile_dim, hp.hidden, hp.permutations)

    def describe(self):
        p = self.puzzle
        return (f"{self.hp.permutations} permutations, minimum Hamming distance {min_hamming(self.permutations)}; "
                f"tiles {p.tile[0]}x{p.tile[1]} px in {p.cell[0]} px cells, gaps >= {p.gap[0]} px, channel shift "
                f"0-{p.shift} px, resized to {self.tile_px} px")

    def make_batch(self, x, generator):
        """Shuffled, standardised tiles (B, 9, C, t, t) and the index of the permutation that shuffled them."""
        x = to_float(x)
        if x.shape[1] == 3 and self.hp.gray_p > 0:
            x = random_grayscale(x, self.hp.gray_p, generator)
        tiles, index, _ = random_jigsaw(x, self.permutations, self.puzzle, generator)
        b, t = tiles.shape[:2]
        tiles = resize_patches(tiles.flatten(0, 1), self.tile_px)  # tiles: 9B x C x p x p
        tiles = standardize_tiles(normalize(tiles, self.spec.mean, self.spec.std))
        return {"tiles": tiles, "perm": index}

    def forward(self, batch):
        tiles, perm = batch["tiles"], batch["perm"]
        codes = self.tile_fc(self.backbone(tiles))  # codes: 9B x tile_dim, tile-major within each puzzle
        logits = self.head(codes.reshape(perm.shape[0], -1))  # logits: B x permutations
        return F.cross_entropy(logits, perm), {"perm_acc": top1(logits, perm)}
