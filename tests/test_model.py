"""Tests of flatprep.learn.model: the masked-autoencoder ViT (micro size, CPU)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from flatprep.learn.model import (
    MODEL_SIZES,
    MAEConfig,
    MaskedAutoencoder,
    ModelError,
    build_model,
    make_config,
    num_visible,
    sincos_table_1d,
    sincos_table_2d,
)

from mae_inputs import GRID, SMALL, model, seeded, smooth_clips, valid_mask  # noqa: F401 (fixtures)

# --------------------------------------------------------------------------- patchify


@pytest.mark.parametrize("in_chans", [1, 2])
def test_patchify_unpatchify_round_trip(in_chans):
    model = build_model("micro", **SMALL, in_chans=in_chans)
    x = torch.randn(3, in_chans, 8, *GRID, generator=seeded(1))
    tokens = model.patchify(x)
    assert tokens.shape == (3, 4 * 6 * 12, 2 * 8 * 8 * in_chans)
    assert torch.equal(model.unpatchify(tokens), x)


def test_patchify_order_is_time_major():
    model = build_model("micro", **SMALL, in_chans=2)
    x = torch.randn(1, 2, 8, *GRID, generator=seeded(2))
    tokens = model.patchify(x)
    # token t * N + i * Wp + j, values ordered (pt, p, p, C)
    t, i, j = 2, 3, 5
    tube = x[0, :, 2 * t:2 * t + 2, 8 * i:8 * i + 8, 8 * j:8 * j + 8]  # (C, pt, p, p)
    assert torch.equal(tokens[0, t * 72 + i * 12 + j], tube.permute(1, 2, 3, 0).reshape(-1))
    # the patch embedding is a Conv3d with kernel = stride = (pt, p, p), as a Linear on these tokens
    linear = model.patch_embed.proj
    conv = linear.weight.view(64, 2, 8, 8, 2).permute(0, 4, 1, 2, 3)  # (D, C, pt, p, p)
    expected = torch.nn.functional.conv3d(x, conv, linear.bias, stride=(2, 8, 8)).flatten(2).transpose(1, 2)
    torch.testing.assert_close(model.patch_embed(tokens), expected, rtol=1e-5, atol=1e-5)


def test_conv3d_checkpoints_load_into_the_linear_patch_embedding():
    model = build_model("micro", **SMALL, in_chans=2)
    weights = model.state_dict()
    linear = weights["patch_embed.proj.weight"]
    weights["patch_embed.proj.weight"] = linear.view(64, 2, 8, 8, 2).permute(0, 4, 1, 2, 3).contiguous()
    other = build_model("micro", **SMALL, in_chans=2)
    other.load_state_dict(weights)
    assert torch.equal(other.patch_embed.proj.weight, linear)


def test_patchify_at_cuts_the_tokens_of_patchify(model, valid_mask):
    x = torch.randn(2, 1, 8, *GRID, generator=seeded(3))
    ids = torch.stack([torch.randperm(model.num_tokens, generator=seeded(i))[:40] for i in range(2)])  # (2, 40)
    tokens = model.patchify(x)
    torch.testing.assert_close(model.patchify_at(x, ids), torch.gather(tokens, 1, ids[..., None].expand(-1, -1, 128)),
                               rtol=0, atol=0)
    from flatprep.learn.masking import patch_pixels

    pixels = model.patchify(valid_mask.expand(1, 1, 8, -1, -1).float())  # (1, L, P)
    masked = model.patchify_at(x, ids, patch_pixels(valid_mask[None], 8))
    torch.testing.assert_close(masked, torch.gather(tokens * pixels, 1, ids[..., None].expand(-1, -1, 128)),
                               rtol=0, atol=0)


def test_block_computes_the_last_tokens_alone_as_in_the_full_block():
    from flatprep.learn.model import Block

    torch.manual_seed(1)
    block = Block(32, 4, 4.0)
    x = torch.randn(2, 20, 32)
    torch.testing.assert_close(block(x, 7), block(x)[:, -7:], rtol=1e-5, atol=1e-6)


def test_patchify_rejects_wrong_shape(model):
    with pytest.raises(ModelError, match=r"\(B, 1, 8, 48, 96\).*got \(2, 1, 8, 48, 80\)"):
        model.patchify(torch.zeros(2, 1, 8, 48, 80))


# --------------------------------------------------------------------------- shapes and sizes


def test_forward_shapes(valid_mask):
    model = build_model("micro", img_size=(32, 64), tubelet=4)  # p = 16, 16 frames
    x = torch.randn(1, 1, 16, 32, 64, generator=seeded(3))
    valid = torch.ones(32, 64, dtype=torch.bool)
    loss, pred, mask = model(x, valid, generator=seeded(0))
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert pred.shape == (1, 4 * 2 * 4, 4 * 16 * 16)
    assert mask.shape == (1, 32)
    latent, mask, ids_keep = model.forward_encoder(x, model.patch_valid(valid), generator=seeded(0))
    n_keep = num_visible(8, 0.9)
    assert ids_keep.shape == (1, 4 * n_keep)
    assert latent.shape == (1, 1 + 4 * n_keep, 64)
    assert model.unpatchify(pred).shape == x.shape


def test_position_embeddings_start_from_sincos_tables_that_fall_with_distance():
    model = build_model("micro", img_size=(112, 288), tubelet=4)
    Tp, Hp, Wp = model.grid_size
    torch.testing.assert_close(model.pos_embed_space[0].detach(), sincos_table_2d(Hp, Wp, 64))
    torch.testing.assert_close(model.decoder_pos_embed_time[0].detach(), sincos_table_1d(Tp, 64))
    table = sincos_table_2d(Hp, Wp, 64).view(Hp, Wp, 64)
    centre = table[3, 9]
    along_row = [float(centre @ table[3, 9 + k]) for k in range(5)]
    along_column = [float(centre @ table[3 - k, 9]) for k in range(4)]
    assert along_row == sorted(along_row, reverse=True) and along_row[0] > along_row[-1] + 1
    assert along_column == sorted(along_column, reverse=True) and along_column[0] > along_column[-1] + 1
    codes = table.view(-1, 64)
    distances = torch.cdist(codes, codes) + torch.eye(len(codes)) * 1e9
    assert float(distances.min()) > 0.1  # every patch has its own code
    assert sincos_table_1d(3, 5)[:, -1].abs().max() == 0  # odd width: the last column is 0


def test_named_sizes_have_reference_shapes():
    expected = {
        "base": (768, 12, 12, 512, 4, 16),
        "small": (384, 12, 6, 256, 4, 8),
        "tiny": (192, 12, 3, 128, 2, 4),
    }
    for size, (dim, depth, heads, ddim, ddepth, dheads) in expected.items():
        config = make_config(size)
        assert (config.embed_dim, config.depth, config.num_heads) == (dim, depth, heads)
        assert (config.decoder_embed_dim, config.decoder_depth,
                config.decoder_num_heads) == (ddim, ddepth, dheads)
    micro = make_config("micro")
    assert micro.embed_dim <= 64 and 2 <= micro.depth <= 4 and micro.decoder_depth <= 2
    assert set(MODEL_SIZES) == {"micro", "tiny", "small", "base"}


def test_base_parameter_count():
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = build_model("base")
    assert len(model.blocks) == 12 and model.blocks[0].attn.num_heads == 12
    assert model.blocks[0].mlp.fc1.out_features == 4 * 768
    assert len(model.decoder_blocks) == 4 and model.decoder_norm.normalized_shape == (512,)
    # ViT-B/16: ~86M in the encoder
    assert 80e6 < model.num_parameters("encoder") < 90e6
    assert model.num_parameters() == (model.num_parameters("encoder")
                                      + model.num_parameters("decoder"))


def test_build_model_rejects_unknown_size_and_key():
    with pytest.raises(ModelError, match=r"unknown model size 'huge'; known sizes: micro"):
        build_model("huge")
    with pytest.raises(ModelError, match=r"unknown MAEConfig key\(s\) width; known MAEConfig keys"):
        build_model("micro", width=3)


# --------------------------------------------------------------------------- loss


def test_loss_ignores_background_pixels(model, valid_mask):
    model.eval()
    x = smooth_clips(2, valid_mask)
    loss, _, mask = model(x, valid_mask, generator=seeded(5))
    changed = x.clone()
    changed[:, :, :, ~valid_mask] = 100.0  # background, inside visible and removed patches
    assert torch.equal(model(changed, valid_mask, generator=seeded(5))[0], loss)


def test_loss_counts_only_removed_valid_pixels(model, valid_mask):
    x = smooth_clips(2, valid_mask)
    patch_valid = model.patch_valid(valid_mask)
    latent, mask, ids_keep = model.forward_encoder(x, patch_valid, generator=seeded(5))
    pred = model.forward_decoder(latent, ids_keep, patch_valid)
    loss = model.forward_loss(x, pred, mask, valid_mask)

    target = model.patchify(x)
    pixel_valid = model.patchify(valid_mask.expand(2, 1, 8, *GRID).float()).bool()
    scored = mask.bool()[..., None] & pixel_valid  # (B, L, P)
    per_clip = [((pred[b] - target[b])[scored[b]] ** 2).mean() for b in range(2)]
    torch.testing.assert_close(loss, torch.stack(per_clip).mean())  # mean per clip, then over clips

    # targets in visible tokens or at background pixels do not count
    changed = target.clone()
    changed[mask == 0] += 5.0
    changed[~pixel_valid] = float("nan")
    assert torch.equal(model.forward_loss(model.unpatchify(changed), pred, mask, valid_mask), loss)
    # a removed, valid pixel does
    b, l, k = scored.nonzero()[0]
    changed[b, l, k] += 1.0
    assert model.forward_loss(model.unpatchify(changed), pred, mask, valid_mask) != loss


def test_visible_pixels_reach_the_loss_only_through_the_encoder(model, valid_mask):
    # changing a visible valid pixel changes the predictions of hidden tokens (the encoder sees it);
    # changing a hidden pixel changes no prediction
    model.eval()
    x = smooth_clips(1, valid_mask)
    _, pred, mask = model(x, valid_mask, generator=seeded(2))
    hidden = mask.bool()  # (B, L)
    visible = model.unpatchify((~hidden)[..., None].expand(-1, -1, model.patch_dim).float()).bool()
    changed = x.clone()
    changed[tuple((visible & valid_mask).nonzero()[0])] += 3.0
    assert (model(changed, valid_mask, generator=seeded(2))[1] - pred)[hidden].abs().max() > 0
    changed = x.clone()
    changed[tuple((~visible & valid_mask).nonzero()[0])] += 3.0
    assert torch.equal(model(changed, valid_mask, generator=seeded(2))[1], pred)


def test_norm_pix_loss_runs(valid_mask):
    model = build_model("micro", **SMALL, norm_pix_loss=True)
    loss, _, _ = model(smooth_clips(2, valid_mask), valid_mask, generator=seeded(0))
    assert torch.isfinite(loss)


def test_training_reduces_the_loss(valid_mask):
    # a fixed batch with a fixed mask: the micro model must fit it within 60 steps
    torch.manual_seed(0)
    model = build_model("micro", **SMALL, mask_ratio=0.75)
    x = smooth_clips(4, valid_mask, seed=3)
    optimizer = model.configure_optimizer(weight_decay=0.05, lr=2e-3, betas=(0.9, 0.95))
    losses = []
    for _ in range(60):
        loss, _, _ = model(x, valid_mask, generator=seeded(11))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # the target is z-scored (variance 1) and the untrained model predicts ~0
    assert losses[0] == pytest.approx(1.0, abs=0.15)
    assert np.mean(losses[-3:]) < 0.6 * losses[0]


def test_configure_optimizer_decays_only_matrices(model, caplog):
    with caplog.at_level(logging.INFO, logger="flatprep.learn.model"):
        optimizer = model.configure_optimizer(weight_decay=0.05, lr=1e-3, betas=(0.9, 0.95))
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"])
    assert all(p.dim() < 2 for p in no_decay["params"])
    n_total = sum(p.numel() for group in optimizer.param_groups for p in group["params"])
    assert n_total == model.num_parameters()
    assert "weight decay on" in caplog.text
    assert not optimizer.defaults.get("fused")


# --------------------------------------------------------------------------- encode


def test_encode_uses_every_valid_token(model, valid_mask):
    model.eval()
    x = smooth_clips(3, valid_mask)
    out = model.encode(x, valid_mask)
    n_valid_tokens = 4 * int(model.patch_valid(valid_mask).sum())
    assert out["cls"].shape == (3, 64) and out["patch_mean"].shape == (3, 64)
    assert out["tokens"].shape == (3, n_valid_tokens, 64)
    assert out["token_ids"].shape == (3, n_valid_tokens)
    token_valid = model.token_valid(model.patch_valid(valid_mask))[0]
    assert torch.equal(out["token_ids"][0], token_valid.nonzero()[:, 0])
    torch.testing.assert_close(out["patch_mean"], out["tokens"].mean(dim=1))
    again = model.encode(x, valid_mask.numpy())  # an ndarray mask works too
    for key in out:
        assert torch.equal(out[key], again[key])
    # batching does not change a sample's embedding
    torch.testing.assert_close(model.encode(x[1:2], valid_mask)["cls"], out["cls"][1:2])


# --------------------------------------------------------------------------- config


def test_config_round_trip():
    config = make_config("micro", **SMALL, masking="random", mask_ratio=0.8)
    assert MAEConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert MAEConfig.from_dict({"mlp_ratio": 2}).mlp_ratio == 2.0  # an int is a float
    assert config.grid_size == (4, 6, 12)


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"img_size": (224, 561)}, r"width 561 is not a multiple of patch_size 16"),
        ({"img_size": (224,)}, r"MAEConfig: img_size must be a pair of positive ints \(height, width\); got \(224,\)"),
        ({"clip_frames": 15, "tubelet": 2}, r"clip_frames 15 is not a multiple of tubelet 2"),
        ({"embed_dim": 100, "num_heads": 12}, r"embed_dim 100 is not a multiple of num_heads 12"),
        ({"decoder_embed_dim": 100}, r"decoder_embed_dim 100 is not a multiple of decoder_num_"),
        ({"mask_ratio": 1.0}, r"mask_ratio must be a number in \[0, 1\); got 1.0"),
        ({"masking": "block"}, r"masking must be one of 'tube', 'random'; got 'block'"),
        ({"depth": "12"}, r"MAEConfig: depth must be an int >= 1; got '12'"),
        ({"depth": 12.0}, r"MAEConfig: depth must be an int >= 1; got 12.0"),
        ({"norm_pix_loss": 1}, r"MAEConfig: norm_pix_loss must be True or False; got 1"),
        ({"patch_size": 0}, r"patch_size must be an int >= 1; got 0"),
        ({"drop_path": 1.5}, r"drop_path must be a number in \[0, 1\); got 1.5"),
    ],
)
def test_config_validation(values, match):
    with pytest.raises(ModelError, match=match):
        MAEConfig.from_dict(values)


def test_config_rejects_unknown_key():
    with pytest.raises(ModelError, match=r"unknown MAEConfig key\(s\) mask_ration; known MAEConfig keys"):
        MAEConfig.from_dict({"mask_ration": 0.5})


# --------------------------------------------------------------------------- precision


def test_cpu_bf16_autocast_forward_backward(model, valid_mask):
    x = smooth_clips(2, valid_mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, pred, _ = model(x, valid_mask, generator=seeded(0))
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_autocast_forward_backward(valid_mask):
    torch.manual_seed(0)
    model = build_model("micro", **SMALL, drop_path=0.1).cuda()
    x = smooth_clips(4, valid_mask).cuda()
    optimizer = model.configure_optimizer(weight_decay=0.05, lr=1e-3, betas=(0.9, 0.95))
    assert optimizer.defaults.get("fused")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss, pred, mask = model(x, valid_mask.cuda(),
                                 generator=torch.Generator("cuda").manual_seed(0))
        out = model.encode(x, valid_mask)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and out["cls"].shape == (4, 64)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)

