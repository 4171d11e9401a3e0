"""Tests of flatprep.learn.reference: the previous training step, kept as the benchmark's fallback
reference, gives the losses and gradients of the model's faster step."""

from __future__ import annotations

import pytest
import torch

from flatprep.learn.model import build_model

from mae_inputs import GRID, SMALL, seeded, valid_mask  # noqa: F401 (fixtures)


@pytest.mark.parametrize("per_clip_masks", [False, True])
@pytest.mark.parametrize("norm_pix_loss", [False, True])
@pytest.mark.parametrize("masking", ["tube", "random"])
def test_step_matches_the_previous_step_in_loss_and_gradients(valid_mask, masking, norm_pix_loss, per_clip_masks):
    """Embedding kept tokens only, decoding without unshuffle and scoring removed valid tokens only
    change nothing but the speed, in training (return_pred=False) and with predictions."""
    from flatprep.learn.reference import reference_decoder, reference_forward

    model = build_model("micro", **SMALL, masking=masking, norm_pix_loss=norm_pix_loss)
    x = torch.randn(3, 1, 8, *GRID, generator=seeded(11))
    valid = valid_mask.expand(3, -1, -1) if per_clip_masks else valid_mask
    noise = torch.rand(3, model.noise_size, generator=seeded(12))
    steps = {"reference": lambda: reference_forward(model, x, valid, noise=noise),
             "with pred": lambda: model(x, valid, noise=noise)[0],
             "training": lambda: model(x, valid, noise=noise, return_pred=False)[0]}
    losses, grads = {}, {}
    for name, forward in steps.items():
        model.zero_grad()
        loss = forward()
        loss.backward()
        losses[name] = loss.detach()
        grads[name] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert len(grads["reference"]) == len(list(model.parameters()))
    for name in ("with pred", "training"):
        torch.testing.assert_close(losses[name], losses["reference"], rtol=1e-6, atol=1e-7, msg=name)
        assert grads[name].keys() == grads["reference"].keys()
        for param in grads[name]:
            torch.testing.assert_close(grads[name][param], grads["reference"][param], rtol=1e-4, atol=1e-7,
                                       msg=f"{name}: {param}")
    _, pred, mask = model(x, valid, noise=noise)
    assert model(x, valid, noise=noise, return_pred=False)[1] is None
    with torch.no_grad():  # the predictions of every valid token, visible ones included
        latent, _, ids_keep = model.forward_encoder(x.masked_fill(~valid_mask, 0.0), model.patch_valid(valid),
                                                    noise=noise)
        expected = reference_decoder(model, latent, ids_keep, model.patch_valid(valid).expand(3, -1))
    torch.testing.assert_close(pred, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.forward_loss(x, pred, mask, valid), losses["reference"], rtol=1e-6, atol=1e-7)
