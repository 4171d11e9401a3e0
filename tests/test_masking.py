"""Tests of flatprep.learn.masking through the model that uses it: which patches are valid, which tokens
are shown to the encoder and which are predicted, for tube and random masking."""

from __future__ import annotations

import pytest
import torch

from flatprep.learn.model import ModelError, build_model

from mae_inputs import GRID, SMALL, model, seeded, smooth_clips, valid_mask  # noqa: F401 (fixtures)


def test_removed_ids_are_the_predicted_tokens(model, valid_mask):
    from flatprep.learn.masking import removed_ids

    patch_valid = model.patch_valid(valid_mask).expand(3, -1)
    ids_keep, mask = model.sample_mask(patch_valid, generator=seeded(4))
    predicted = mask.bool() & model.token_valid(patch_valid)  # (3, L)
    ids = removed_ids(ids_keep, model.token_valid(patch_valid))
    assert ids.shape == (3, int(predicted[0].sum()))
    assert torch.equal(torch.zeros_like(predicted).scatter_(1, ids, True), predicted)
    assert torch.equal(ids, ids.sort(dim=1).values)


def test_patch_valid_finds_empty_patches(model, valid_mask):
    patch_valid = model.patch_valid(valid_mask)
    assert patch_valid.shape == (1, 72)
    blocks = valid_mask.reshape(6, 8, 12, 8).permute(0, 2, 1, 3).reshape(72, 64)
    assert torch.equal(patch_valid[0], blocks.any(dim=1))
    n_valid = int(patch_valid.sum())
    assert 20 < n_valid < 72  # the mask leaves empty patches (corners, medial wall)


@pytest.mark.parametrize("masking", ["tube", "random"])
def test_masking_never_shows_or_predicts_empty_patches(valid_mask, masking):
    torch.manual_seed(0)
    model = build_model("micro", **SMALL, masking=masking)
    x = smooth_clips(3, valid_mask)
    token_valid = model.token_valid(model.patch_valid(valid_mask)).expand(3, -1)
    for seed in range(5):
        loss, pred, mask = model(x, valid_mask, generator=seeded(seed))
        visible = mask == 0
        predicted = mask.bool() & token_valid
        assert not (visible & ~token_valid).any()
        assert torch.all(pred[~token_valid] == 0)  # empty patches get no prediction
        assert predicted.any(dim=1).all()


def test_tube_masking_hides_the_same_patches_at_every_step(model, valid_mask):
    patch_valid = model.patch_valid(valid_mask).expand(4, -1)
    n_valid = int(patch_valid[0].sum())
    for ratio in (0.9, 0.75, 0.5):
        ids_keep, mask = model.sample_mask(patch_valid, mask_ratio=ratio, generator=seeded(7))
        per_step = mask.view(4, 4, 72)  # (B, Tp, N)
        assert torch.equal(per_step, per_step[:, :1].expand_as(per_step))
        n_keep = round((1 - ratio) * n_valid)
        assert ((per_step[:, 0] == 0).sum(dim=1) == n_keep).all()
        assert ids_keep.shape == (4, 4 * n_keep)
        assert patch_valid[0][ids_keep % 72].all()
    # samples get different masks
    assert not torch.equal(mask[0], mask[1])


def test_random_masking_honours_the_ratio_on_valid_tokens(valid_mask):
    model = build_model("micro", **SMALL, masking="random")
    patch_valid = model.patch_valid(valid_mask).expand(2, -1)
    token_valid = model.token_valid(patch_valid)
    n_valid_tokens = int(token_valid[0].sum())
    ids_keep, mask = model.sample_mask(patch_valid, generator=seeded(3))
    n_keep = round(0.1 * n_valid_tokens)
    assert ((mask == 0).sum(dim=1) == n_keep).all()
    assert ((mask.bool() & token_valid).sum(dim=1) == n_valid_tokens - n_keep).all()
    assert token_valid.gather(1, ids_keep).all()
    # not tubes: the visible patches differ between time steps
    per_step = mask.view(2, 4, 72)
    assert not torch.equal(per_step[:, 0], per_step[:, 1])


def test_mask_ratio_override_and_minimum_of_one(model, valid_mask):
    patch_valid = model.patch_valid(valid_mask)
    ids_keep, _ = model.sample_mask(patch_valid, mask_ratio=0.999, generator=seeded(0))
    assert ids_keep.shape == (1, 4)  # one spatial patch at each of the 4 time steps
    with pytest.raises(ModelError, match=r"mask_ratio must be a number in \[0, 1\); got 1.0"):
        model.sample_mask(patch_valid, mask_ratio=1.0)


def test_masks_differing_in_patch_count_are_rejected(model, valid_mask):
    masks = torch.stack([valid_mask, torch.ones_like(valid_mask)])
    x = torch.zeros(2, 1, 8, *GRID)
    with pytest.raises(ModelError, match="between .* and 72 valid patches"):
        model(x, masks)
    with pytest.raises(ModelError, match="no valid pixel"):
        model(x, torch.zeros_like(valid_mask))
    with pytest.raises(ModelError, match="valid_mask must be boolean; got dtype torch.float32"):
        model(x, valid_mask.float())


def test_given_noise_masks_like_the_same_noise_drawn_inside():
    model = build_model("micro", img_size=(32, 64), clip_frames=4, tubelet=2)
    mask = torch.zeros(32, 64, dtype=torch.bool)
    mask[4:28, 6:58] = True
    clips = torch.randn(3, 1, 4, 32, 64)
    noise = torch.rand(3, model.noise_size, generator=torch.Generator().manual_seed(1))
    _, _, from_noise = model(clips, mask, noise=noise)
    _, _, from_rows = model(clips[1:], mask, noise=noise[1:])
    assert torch.equal(from_noise[1:], from_rows)  # each sample's mask depends on its own row only
    with pytest.raises(ModelError, match=r"noise must have shape \(3, \d+\)"):
        model(clips, mask, noise=noise[:, :5])
