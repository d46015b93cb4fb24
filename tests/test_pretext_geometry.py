"""The shortcut guards of relative position and jigsaw (Doersch et al. 2015, Noroozi & Favaro 2016), checked on
the geometry the samplers return: the neighbour patch's position says nothing of its label, and no two jigsaw
tiles come closer than the gap, whatever offsets and channel shifts are drawn."""
import itertools

import numpy as np
import pytest
import torch

from selfsup.views.jigsaw import jigsaw_boxes, puzzle_layout
from selfsup.views.ops import resized_crop
from selfsup.views.pretext import (NEIGHBOURS, hamming_permutations, pair_scales, random_jigsaw, random_pair_boxes,
                                   random_relative_pairs, unshuffle_tiles)


def coords(h, w, b=1):
    """A (B, 2, H, W) image whose pixels hold their own (row, col)."""
    r, c = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return torch.stack([r, c]).expand(b, 2, h, w).clone()


# ------------------------------------------------------------------------------ relative position

@pytest.mark.parametrize("side", [8, 28, 32, 64])
def test_relative_position_boxes_match_the_labels_with_a_gap(side):
    scales = pair_scales(side, side)
    x = coords(side, side, 2000)
    centre, other, label, boxes = random_relative_pairs(x, scales, 16, torch.Generator().manual_seed(side))
    assert set(label.tolist()) == set(range(8)) and centre.shape == other.shape == (2000, 2, 16, 16)
    p, c0, o0 = boxes["size"], boxes["centre"], boxes["other"]
    assert set(p[:, 0].tolist()) == set(range(scales.lo[0], scales.hi[0] + 1))  # the scale varies over its range
    assert (torch.cat([c0, o0]) >= 0).all() and (torch.cat([c0, o0]) + torch.cat([p, p]) <= side).all()
    sz = p[:, 0]
    assert torch.equal(other, resized_crop(x, o0[:, 0], o0[:, 1], sz, sz, 16))  # the patches are their boxes
    off = torch.tensor(NEIGHBOURS)[label]  # the offset each label claims: B x 2
    delta = o0 - c0
    for axis in range(2):
        moved, still = off[:, axis] != 0, off[:, axis] == 0
        assert torch.all(delta[moved, axis] * off[moved, axis] > p[moved, axis])  # that side, past a gap
        assert torch.all(delta[still, axis].abs() < p[still, axis] / 2)  # only the jitter apart


def neighbour_position_accuracy(pos, label):
    """Held-out accuracy of the best guess of the label from a patch's (row, col) alone: the majority label of
    each position on the first half, scored on the second (unseen positions: the most common label)."""
    n = len(label) // 2
    key = (pos[:, 0] * 1000 + pos[:, 1]).tolist()
    votes = {}
    for k, y in zip(key[:n], label[:n].tolist()):
        votes.setdefault(k, np.zeros(8))[y] += 1
    fallback = int(np.bincount(label[:n].numpy(), minlength=8).argmax())
    guess = [int(votes[k].argmax()) if k in votes else fallback for k in key[n:]]
    return float(np.mean(np.array(guess) == label[n:].numpy()))


@pytest.mark.parametrize("side", [28, 32, 64])
def test_neighbour_position_says_nothing_of_the_label(side):
    """On a fixed 3x3 grid at 28 px each label meant one place of the image; the neighbour now sits anywhere."""
    boxes = random_pair_boxes(20000, pair_scales(side, side), torch.Generator().manual_seed(0))
    acc = neighbour_position_accuracy(boxes["other"], boxes["label"])
    assert acc < 0.2, acc  # chance is 1/8
    # The same classifier does read the label where it is written: from the offset between the two patches.
    assert neighbour_position_accuracy(boxes["other"] - boxes["centre"], boxes["label"]) > 0.95


# ------------------------------------------------------------------------------------------ jigsaw

def coords3(h, w, b=1):
    """A (B, 3, H, W) image whose every channel holds row * 1000 + col: each tile channel says where it was cut."""
    r, c = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return (r * 1000 + c).expand(b, 3, h, w).clone()


@pytest.mark.parametrize("side,channels", [(9, 1), (15, 3), (28, 1), (28, 3), (32, 1), (32, 3), (64, 3), (96, 3)])
def test_jigsaw_tiles_keep_a_gap_for_every_offset_drawn(side, channels):
    puzzle = puzzle_layout(side, side, channels)
    assert min(puzzle.tile) >= 2 and min(puzzle.gap) >= 1 and min(puzzle.free) >= 0
    assert puzzle.shift == (2 if channels == 3 else 0)  # per-channel shift: RGB only
    perms = hamming_permutations(24, 9)
    x = coords3(side, side, 3000)[:, :channels]
    shuffled, index, (origin, offset, shift) = random_jigsaw(x, perms, puzzle, torch.Generator().manual_seed(side))
    tiles = unshuffle_tiles(shuffled, perms, index)  # B x 9 x C x t x t, back in grid order
    t = puzzle.tile[0]
    row, col = tiles[..., 0, 0] // 1000, tiles[..., 0, 0] % 1000  # each channel's corner: B x 9 x C
    ar = torch.arange(t, dtype=torch.float32)
    assert torch.equal(tiles, (row[..., None, None] + ar.view(t, 1)) * 1000 + col[..., None, None] + ar)  # exact
    top, left = jigsaw_boxes(puzzle, origin, offset, shift)
    assert torch.equal(row.long(), top) and torch.equal(col.long(), left)
    if channels == 3:
        assert len(set(shift.flatten().tolist())) == 3  # 0, 1 and 2 px drawn
        assert (shift[..., 0, :] != shift[..., 1, :]).any()  # channels move independently
    # Every pair of tiles: their pixels (all channels) are >= gap apart along rows or along columns.
    r0, r1 = row.min(-1).values, row.max(-1).values + t - 1  # B x 9: first and last row of each tile
    c0, c1 = col.min(-1).values, col.max(-1).values + t - 1
    gaps = [torch.maximum(torch.maximum(r0[:, j] - r1[:, i], r0[:, i] - r1[:, j]),
                          torch.maximum(c0[:, j] - c1[:, i], c0[:, i] - c1[:, j])) - 1
            for i, j in itertools.combinations(range(9), 2)]
    assert int(torch.stack(gaps).min()) >= puzzle.gap[0]
    assert (origin >= 0).all() and (top >= 0).all() and (top + t <= side).all()
    assert set(index.tolist()) > {0} and len(set(index.tolist())) > 10


@pytest.mark.parametrize("side,channels,least", [(8, 1, 9), (14, 3, 15)])
def test_jigsaw_refuses_images_too_small_for_gaps(side, channels, least):
    with pytest.raises(ValueError, match=f"too small for a 3x3 jigsaw with gaps.*{least} px at least"):
        puzzle_layout(side, side, channels)
