"""The previous training step of :class:`~flatprep.learn.model.MaskedAutoencoder`, kept as a reference.

Before the patch embedding became a Linear on the kept tokens, the model ran
a Conv3d over every patch of the clip and kept about 10 % of the result; its
decoder scattered the visible tokens and mask tokens onto the full token grid
(MAE's unshuffle), gathered the valid ones back, and predicted every valid
token; and it scored the loss on a full ``(B, L, P)`` grid of predictions. This module runs
that computation with a current model's weights, so that tests can check the
current step gives the same loss and gradients, and ``benchmarks/train_step.py``
can time both in one run. Nothing in training uses it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .masking import check_inputs, valid_token_ids

__all__ = ["reference_decoder", "reference_forward", "reference_loss"]


def reference_forward(model, x: torch.Tensor, valid_mask, *, noise: torch.Tensor) -> torch.Tensor:
    """The previous ``model(x, valid_mask, noise=noise)[0]``: Conv3d over all patches, full-grid loss."""
    valid_mask = check_inputs(x, valid_mask, model.config)  # (Bv, H, W)
    x = x.masked_fill(~valid_mask[:, None, None], 0.0)  # (B, C, T, H, W)
    patch_valid = model._expand_patch_valid(model.patch_valid(valid_mask), x.shape[0])  # (B, N)
    ids_keep, mask = model.sample_mask(patch_valid, noise=noise)
    c = model.config
    weight = model.patch_embed.proj.weight  # (D, pt * p * p * C) -> Conv3d (D, C, pt, p, p)
    weight = weight.view(-1, c.tubelet, c.patch_size, c.patch_size, c.in_chans).permute(0, 4, 1, 2, 3)
    kernel = (c.tubelet, c.patch_size, c.patch_size)
    tokens = F.conv3d(x, weight, model.patch_embed.proj.bias, stride=kernel)  # (B, D, Tp, Hp, Wp)
    tokens = tokens.flatten(2).transpose(1, 2)  # (B, L, D)
    D = tokens.shape[-1]
    tokens = tokens + (model.pos_embed_time[:, :, None, :] + model.pos_embed_space[:, None, :, :]).flatten(1, 2)
    tokens = torch.gather(tokens, 1, ids_keep[..., None].expand(-1, -1, D))  # (B, L_keep, D)
    latent = torch.cat([model.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1)  # (B, 1 + L_keep, D)
    for block in model.blocks:
        latent = block(latent)
    latent = model.norm(latent)
    pred = reference_decoder(model, latent, ids_keep, patch_valid)  # (B, L, P)
    return reference_loss(model, x, pred, mask, valid_mask)


def reference_decoder(model, latent: torch.Tensor, ids_keep: torch.Tensor, patch_valid: torch.Tensor) -> torch.Tensor:
    """The previous ``forward_decoder``: unshuffle onto the full grid, keep valid tokens, predict them all."""
    B = latent.shape[0]
    ids_valid = valid_token_ids(patch_valid, model.grid_size[0])  # (B, L_valid)
    x = model.decoder_embed(latent)  # (B, 1 + L_keep, Dd)
    Dd = x.shape[-1]
    full = model.mask_token.expand(B, model.num_tokens, Dd)  # (B, L, Dd)
    full = full.scatter(1, ids_keep[..., None].expand(-1, -1, Dd), x[:, 1:])  # (B, L, Dd)
    full = full + (model.decoder_pos_embed_time[:, :, None, :]
                   + model.decoder_pos_embed_space[:, None, :, :]).flatten(1, 2)  # (B, L, Dd)
    tokens = torch.gather(full, 1, ids_valid[..., None].expand(-1, -1, Dd))  # (B, L_valid, Dd)
    x = torch.cat([x[:, :1], tokens], dim=1)  # (B, 1 + L_valid, Dd)
    for block in model.decoder_blocks:
        x = block(x)
    y = model.decoder_pred(model.decoder_norm(x)[:, 1:])  # (B, L_valid, P)
    pred = y.new_zeros(B, model.num_tokens, model.patch_dim)  # (B, L, P)
    return pred.scatter(1, ids_valid[..., None].expand(-1, -1, model.patch_dim), y)  # (B, L, P)


def reference_loss(model, x: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor,
                   valid_mask: torch.Tensor) -> torch.Tensor:
    """The previous ``forward_loss``: every token of the clip, eight clip-sized temporaries."""
    B, C, T, H, W = x.shape
    pixel_valid = valid_mask.reshape(-1, 1, 1, H, W).expand(B, C, T, H, W)  # (B, C, T, H, W)
    pixel_valid = model.patchify(pixel_valid.float())  # (B, L, P)
    target = model.patchify(x).float().masked_fill(pixel_valid == 0, 0.0)  # (B, L, P)
    if model.config.norm_pix_loss:
        count = pixel_valid.sum(dim=-1, keepdim=True).clamp(min=1.0)
        mean = target.sum(dim=-1, keepdim=True) / count
        var = ((target - mean) ** 2 * pixel_valid).sum(dim=-1, keepdim=True) / count
        target = (target - mean) / (var + 1e-6).sqrt()
    weight = pixel_valid * mask.float()[..., None]  # (B, L, P)
    error = ((pred.float() - target) ** 2).masked_fill(weight == 0, 0.0)
    per_clip = error.sum(dim=(1, 2)) / weight.sum(dim=(1, 2)).clamp(min=1.0)  # (B,)
    return per_clip.mean()
