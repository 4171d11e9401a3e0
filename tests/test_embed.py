"""flatprep.learn.embed: per-clip embeddings of real flat maps from a (micro) encoder, and their file."""

import re

import numpy as np
import pytest
import torch

from flatprep.exceptions import CheckpointError, ModelError
from flatprep.h5 import read_run
from flatprep.learn.checkpoint import save_checkpoint
from flatprep.learn.embed import ClipEmbeddings, Encoder, read_embeddings, write_embeddings
from flatprep.learn.model import build_model
from flatprep.shards import encode_mask


@pytest.fixture(scope="module")
def encoder(coarse_grid):
    """A seeded micro encoder on the 2.4 mm grid (the sample subjects' grid), normalising each frame."""
    torch.manual_seed(0)
    model = build_model("micro", img_size=coarse_grid.shape, clip_frames=16, tubelet=16)
    return Encoder(model, coarse_grid.pixels, clip_frames=16, normalize="frame", clip_value=3.0,
                   clean_options=None, grid_description=coarse_grid.describe(), source="in memory")


@pytest.fixture(scope="module")
def frames(participant_out):
    """A sample subject's stored flat frames: (n_timepoints, n_pixels) float16."""
    path = sorted(participant_out.rglob("sub-01_task-rest_*_desc-flat_bold.h5"))[0]
    return read_run(path).frames


def test_one_row_per_whole_clip_and_identical_clips_embed_identically(encoder, frames):
    n_clips = frames.shape[0] // 16
    assert n_clips >= 3 and frames.shape[0] % 16  # the partial clip at the end is left out
    repeated = frames.copy()
    repeated[32:48] = frames[0:16]  # clip 2 := clip 0
    out = encoder.embed_frames(repeated)
    assert out.cls.shape == out.patch_mean.shape == (n_clips, encoder.dim)
    assert out.cls.dtype == np.float32 and np.all(np.isfinite(out.cls))
    np.testing.assert_array_equal(out.start, np.arange(n_clips) * 16)
    np.testing.assert_allclose(out.cls[2], out.cls[0], atol=1e-6)
    np.testing.assert_allclose(out.patch_mean[2], out.patch_mean[0], atol=1e-6)
    assert not np.allclose(out.cls[1], out.cls[0])  # different data, different embedding


def test_embeddings_are_deterministic_and_do_not_depend_on_the_batch(encoder, frames):
    first, again = encoder.embed_frames(frames), encoder.embed_frames(frames)
    one_by_one = encoder.embed_frames(frames, batch_size=1)
    np.testing.assert_array_equal(first.cls, again.cls)
    np.testing.assert_array_equal(first.patch_mean, again.patch_mean)
    np.testing.assert_allclose(one_by_one.cls, first.cls, atol=1e-5)


def test_frames_are_normalised_per_frame_as_in_training(encoder, frames):
    scaled = encoder.embed_frames((frames.astype(np.float32) * 2).astype(np.float16))  # exact in float16
    np.testing.assert_allclose(scaled.cls, encoder.embed_frames(frames).cls, atol=1e-5)


def test_frames_of_another_grid_are_refused(encoder, frames):
    with pytest.raises(ValueError, match=r"frames must have shape \(n_timepoints, \d+\) for this encoder's grid"):
        encoder.embed_frames(frames[:, :-1])


def test_from_pretrained_reads_back_the_same_encoder(encoder, coarse_grid, frames, tmp_path):
    optimizer = torch.optim.SGD(encoder.model.parameters(), lr=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    description = {"train": {"normalize": "frame", "clip_value": 3.0}, "model": encoder.model.config.to_dict(),
                   "grid": coarse_grid.describe(), "mask": encode_mask(coarse_grid.mask), "clip_frames": 16,
                   "clean_options": {"target_tr": 1.0}}
    save_checkpoint(tmp_path / "run" / "checkpoints" / "step-000001", model=encoder.model, optimizer=optimizer,
                    scheduler=scheduler, config=description, progress={"step": 1, "epoch": 0, "batches_in_epoch": 1})
    loaded = Encoder.from_pretrained(tmp_path / "run")  # the run folder: its latest checkpoint
    assert loaded.source.endswith("step-000001") and loaded.clean_options == {"target_tr": 1.0}
    assert (loaded.normalize, loaded.clip_value, loaded.clip_frames) == ("frame", 3.0, 16)
    np.testing.assert_array_equal(loaded.pixels.mask, coarse_grid.mask)
    np.testing.assert_allclose(loaded.embed_frames(frames).cls, encoder.embed_frames(frames).cls, atol=1e-6)
    with pytest.raises(CheckpointError, match="neither a checkpoint folder .* nor a run folder"):
        Encoder.from_pretrained(tmp_path)


def test_embed_shards_gives_the_clips_of_each_stored_run(encoder, shards):
    runs, embeddings = encoder.embed_shards(shards)
    # One shard: every run but the first starts at an offset, and clip starts must be within the run.
    assert len(runs) == len(embeddings) == 4 and len(list((shards / "shards").glob("*.h5"))) == 1
    for run, clips in zip(runs, embeddings):
        direct = encoder.embed_frames(read_run(shards / run["source"]).frames)
        np.testing.assert_array_equal(clips.start, direct.start)
        np.testing.assert_allclose(clips.cls, direct.cls, atol=1e-5)
        assert run["entities"]["subject"] in run["label"]


def test_embeddings_file_round_trip(encoder, tmp_path):
    rng = np.random.default_rng(0)
    dim = encoder.dim
    parts = [ClipEmbeddings(rng.standard_normal((n, dim)).astype(np.float32),
                            rng.standard_normal((n, dim)).astype(np.float32), np.arange(n) * 16) for n in (3, 0, 2)]
    runs = [{"label": f"sub-0{i}_task-rest", "entities": {"subject": f"0{i}"}, "source": f"r{i}.h5"} for i in range(3)]
    path = write_embeddings(tmp_path / "embeddings.h5", runs, parts, encoder=encoder)
    table = read_embeddings(path)
    assert table["runs"] == runs and table["clip_frames"] == 16
    np.testing.assert_array_equal(table["clips_cls"], np.concatenate([p.cls for p in parts]))
    np.testing.assert_array_equal(table["clips_run"], [0, 0, 0, 2, 2])
    np.testing.assert_array_equal(table["clips_start"], [0, 16, 32, 0, 16])
    np.testing.assert_allclose(table["runs_patch_mean"][0], parts[0].patch_mean.mean(0), rtol=1e-6)
    np.testing.assert_array_equal(table["runs_cls"][1], np.zeros(dim))  # a run without a whole clip


def _save_encoder(encoder, grid, folder):
    """A checkpoint folder holding ``encoder`` (trained on ``grid``)."""
    optimizer = torch.optim.SGD(encoder.model.parameters(), lr=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    description = {"train": {"normalize": "frame", "clip_value": 3.0}, "model": encoder.model.config.to_dict(),
                   "grid": grid.describe(), "mask": encode_mask(grid.mask), "clip_frames": encoder.clip_frames,
                   "clean_options": {"target_tr": 1.0}}
    return save_checkpoint(folder, model=encoder.model, optimizer=optimizer, scheduler=scheduler,
                           config=description, progress={"step": 1, "epoch": 0, "batches_in_epoch": 1})


def test_data_of_another_grid_is_one_line_naming_both_grids(grid, shards, tmp_path, caplog):
    """A 1.2 mm encoder refuses 2.4 mm flat maps, from per-run files and from shards."""
    from flatprep.pipelines.cli.embed import main as embed_main

    torch.manual_seed(0)
    fine = Encoder(build_model("micro", img_size=grid.shape, clip_frames=16, tubelet=16), grid.pixels,
                   clip_frames=16, normalize="frame", clip_value=3.0, clean_options=None,
                   grid_description=grid.describe(), source="fine")
    folder = _save_encoder(fine, grid, tmp_path / "fine" / "step-000001")
    expected = r"flat maps on fsaverage 2.4 mm, 112 x 288, .*trained on fsaverage 1.2 mm, 224 x 560"
    for source in (shards / "shards", next(shards.rglob("sub-01_task-rest_*_desc-flat_bold.h5"))):
        caplog.clear()
        assert embed_main([str(folder), str(tmp_path / "emb"), str(source)]) == 2
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == 1 and "\n" not in errors[0]


        assert re.search(expected, errors[0]), errors[0]
    assert not (tmp_path / "emb" / "embeddings.h5").exists()


def test_a_checkpoint_with_weights_of_another_size_is_one_line(encoder, coarse_grid, tmp_path):
    from safetensors.torch import save_file

    folder = _save_encoder(encoder, coarse_grid, tmp_path / "run" / "checkpoints" / "step-000001")
    torch.manual_seed(0)
    wider = build_model("micro", img_size=coarse_grid.shape, clip_frames=16, tubelet=16, embed_dim=96)
    save_file({k: v.contiguous() for k, v in wider.state_dict().items()}, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model.safetensors: weights of another model size \(cls_token "
                                              r"\(1, 1, 96\) in the file, \(1, 1, 64\) in the model; "):
        Encoder.from_pretrained(folder)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch without CUDA")
def test_cuda_on_a_cpu_only_torch_is_one_line(encoder, coarse_grid, tmp_path, capsys):
    from flatprep.pipelines.cli.embed import main as embed_main

    folder = _save_encoder(encoder, coarse_grid, tmp_path / "run" / "checkpoints" / "step-000001")
    with pytest.raises(ModelError, match="device 'cuda': CUDA is not available .*; use --device cpu"):
        Encoder.from_pretrained(folder, device="cuda")
    with pytest.raises(SystemExit) as exit_info:
        embed_main([str(folder), str(tmp_path / "emb"), "--device", "cuda"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "--device cuda: " in err and "Traceback" not in err
