"""Checkpoints: atomic writes, a full disk, corrupt files, a dangling ``latest``, old Conv3d weights."""

import errno
import json
import logging

import pytest
import torch

from flatprep.exceptions import CheckpointError
from flatprep.learn import checkpoint as ckpt
from flatprep.learn.model import build_model

GRID = (32, 64)


def _parts():
    torch.manual_seed(0)
    model = build_model("micro", img_size=GRID, clip_frames=8, tubelet=4)
    optimizer = model.configure_optimizer(0.05, 1e-3, (0.9, 0.95))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    model(torch.randn(2, 1, 8, *GRID), torch.ones(GRID, dtype=torch.bool))[0].backward()
    optimizer.step()
    return model, optimizer, scheduler


def _save(run_dir, step, parts):
    model, optimizer, scheduler = parts
    return ckpt.save_checkpoint(run_dir / "checkpoints" / f"step-{step:06d}", model=model, optimizer=optimizer,
                                scheduler=scheduler, config={"model": model.config.to_dict()},
                                progress={"step": step, "epoch": 0, "batches_in_epoch": step})


def test_resume_falls_back_past_a_truncated_checkpoint_naming_it(tmp_path, caplog):
    parts = _parts()
    _save(tmp_path, 3, parts)
    newest = _save(tmp_path, 6, parts)
    assert ckpt.resume_checkpoint(tmp_path) == newest
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    with caplog.at_level(logging.WARNING):
        chosen = ckpt.resume_checkpoint(tmp_path)
    assert chosen.name == "step-000003"
    assert "step-000006/model.safetensors: corrupt or truncated" in caplog.text
    with pytest.raises(CheckpointError, match="step-000006/model.safetensors: corrupt or truncated"):
        ckpt.load_model_weights(newest, parts[0])
    (chosen / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="no valid checkpoint to resume from.*step-000003/state.json: corrupt"):
        ckpt.resume_checkpoint(tmp_path)


def test_latest_pointing_nowhere_is_one_line_not_a_fresh_start(tmp_path):
    assert ckpt.resume_checkpoint(tmp_path) is None                  # no run yet: nothing to resume
    _save(tmp_path, 2, _parts())
    (tmp_path / "checkpoints" / "latest").write_text("step-000009\n")
    with pytest.raises(CheckpointError, match="latest: names step-000009, which does not exist"):
        ckpt.resume_checkpoint(tmp_path)
    (tmp_path / "checkpoints" / "latest").unlink()
    with pytest.raises(CheckpointError, match="latest: missing although .* holds checkpoints"):
        ckpt.resume_checkpoint(tmp_path)


def test_full_disk_while_saving_leaves_no_partial_checkpoint(tmp_path, monkeypatch):
    import safetensors.torch

    parts = _parts()
    _save(tmp_path, 1, parts)
    real = safetensors.torch.save_file

    def full_disk(tensors, path, *args, **kwargs):
        if path.endswith("optimizer.safetensors"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, path, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with pytest.raises(CheckpointError, match=r"step-000002/optimizer.safetensors: cannot write the checkpoint "
                                              r"\(No space left on device\)"):
        _save(tmp_path, 2, parts)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step-000001"]
    assert ckpt.resume_checkpoint(tmp_path).name == "step-000001"


def test_conv3d_patch_embedding_checkpoints_still_load(tmp_path):
    from safetensors.torch import save_file

    model = _parts()[0]
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    linear = weights["patch_embed.proj.weight"]                         # (D, pt * p * p * C)
    weights["patch_embed.proj.weight"] = linear.view(64, 4, 16, 16, 1).permute(0, 4, 1, 2, 3).contiguous()
    (tmp_path / "old").mkdir()
    save_file(weights, str(tmp_path / "old" / "model.safetensors"))
    fresh = build_model("micro", img_size=GRID, clip_frames=8, tubelet=4)
    ckpt.load_model_weights(tmp_path / "old", fresh)
    assert torch.equal(fresh.patch_embed.proj.weight, linear)
    x, valid = torch.randn(1, 1, 8, *GRID), torch.ones(GRID, dtype=torch.bool)
    noise = torch.rand(1, model.noise_size)
    assert torch.equal(fresh(x, valid, noise=noise)[0], model(x, valid, noise=noise)[0])


def test_metrics_after_a_resume_hold_each_step_once(tmp_path):
    from flatprep.learn.train import keep_metrics_until, refuse_existing_run

    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (2, 4, 6, 8)))
    keep_metrics_until(path, 4)                                         # resumed from step 4
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [2, 4]
    with pytest.raises(Exception, match="already holds a training run \\(metrics.jsonl\\).*--resume"):
        refuse_existing_run(tmp_path)
