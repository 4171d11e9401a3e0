"""Pretraining on CPU: loss, run folder, exact resume after SIGKILL, 2-process gloo DDP."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from flatprep.learn.checkpoint import latest_checkpoint, read_config
from flatprep.learn.embed import Encoder, read_embeddings
from flatprep.learn.train import TrainConfigError, resolve_config, run

MICRO = ["model_args.tubelet=4", "batch_size=2", "num_workers=0", "log_every=1", "eval_batches=1"]


def _config(shards, out_dir, *overrides, **values):
    return resolve_config(None, [*MICRO, *overrides], data=str(shards), out_dir=str(out_dir), **values)


def _losses(run_dir: Path) -> dict[int, float]:
    losses = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            losses[record["step"]] = record["loss"]
    return losses


def test_training_writes_a_run_folder_and_the_loss_falls(shards, tmp_path):
    config = _config(shards, tmp_path / "run", "steps=200", "eval_every=200", "save_every=100", "lr=0.003",
                     "warmup_steps=10", "batch_size=4", "log_every=20", "model_args.tubelet=16")
    final = run(config)
    losses = _losses(tmp_path / "run")  # means over 20-step windows
    assert losses[200] < 0.95 * losses[20]
    # Six training clips cannot teach the micro model to beat zeros on another subject; the demo
    # (eight subjects, 1,500 steps) reports that comparison. Here: validation ran on the same pixels.
    assert final["val_zero_loss"] > 0.5 and 0.5 < final["val_loss"] < 2.0
    # The held-out subject's masked pixels are predictable from its visible ones: the PCA
    # baseline, fitted on the other subject's frames, scores far below zeros on the same pixels.
    assert final["val_pca_loss"] < 0.8 * final["val_zero_loss"], final
    assert (tmp_path / "run" / "config.toml").exists()
    assert list((tmp_path / "run" / "figures").glob("recon_step-*.png"))
    checkpoint = latest_checkpoint(tmp_path / "run")
    assert checkpoint.name == "step-000200"
    assert {p.name for p in checkpoint.iterdir()} == {"model.safetensors", "optimizer.safetensors",
                                                      "rng.safetensors", "state.json", "config.json"}
    assert read_config(checkpoint)["clean_options"]["target_tr"] == 1.0


def test_encoder_from_pretrained_embeds_runs(shards, tmp_path):
    run(_config(shards, tmp_path / "run", "steps=2", "eval_every=0", "save_every=0"))
    encoder = Encoder.from_pretrained(tmp_path / "run")
    from flatprep.pipelines.cli.embed import main as embed_main

    assert embed_main([str(tmp_path / "run"), str(tmp_path / "emb"), str(shards)]) == 0
    table = read_embeddings(tmp_path / "emb" / "embeddings.h5")
    n_runs = len(table["runs"])
    assert n_runs == 4 and table["runs_cls"].shape == (4, encoder.dim)
    assert table["clips_cls"].shape[1] == encoder.dim == table["clips_patch_mean"].shape[1]
    assert set(table["clips_run"]) == set(range(n_runs))
    assert {r["entities"]["task"] for r in table["runs"]} == {"rest", "motor"}


def test_embedding_a_bids_scan_matches_embedding_its_flat_map(shards, sample_bids, tmp_path):
    """New scans are cleaned and projected exactly as the participant level did."""
    import numpy as np

    from flatprep.h5 import read_run
    from flatprep.pipelines.bids import discover_runs

    run(_config(shards, tmp_path / "run", "steps=1", "eval_every=0", "save_every=0"))
    encoder = Encoder.from_pretrained(tmp_path / "run")
    spec = discover_runs(sample_bids, participant_labels=["01"], tasks=["rest"])[0]
    frames = encoder.flatten_scan(spec.bold, space=spec.space, sidecars=spec.sidecars, confounds_file=spec.confounds)
    stored = read_run(next(shards.rglob("sub-01_task-rest_*_desc-flat_bold.h5"))).frames
    np.testing.assert_array_equal(frames, stored)


def test_a_second_run_into_the_same_folder_is_refused(shards, tmp_path):
    config = _config(shards, tmp_path / "run", "steps=1", "eval_every=0", "save_every=0")
    run(config)
    with pytest.raises(TrainConfigError, match="already holds a training run.*--resume"):
        run(config)


def test_unknown_and_mistyped_settings_are_refused():
    with pytest.raises(TrainConfigError, match="unknown setting\\(s\\) stepz; known settings: data"):
        resolve_config(None, ["stepz=3"])
    with pytest.raises(TrainConfigError, match="TrainConfig: steps must be an int; got .many."):
        resolve_config(None, ["steps=many"])
    with pytest.raises(TrainConfigError, match="override 'steps': expected key=value"):
        resolve_config(None, ["steps"])


def _train_command(shards, out_dir, *overrides):
    return [sys.executable, "-m", "flatprep.pipelines.cli.train", "--data", str(shards), "--out-dir", str(out_dir),
            *[a for o in [*MICRO, *overrides] for a in ("--set", o)]]


def test_resume_after_sigkill_gives_the_same_losses(shards, tmp_path):
    settings = ["steps=10", "save_every=3", "eval_every=0"]
    subprocess.run(_train_command(shards, tmp_path / "whole", *settings), check=True, capture_output=True)
    killed = tmp_path / "killed"
    process = subprocess.Popen(_train_command(shards, killed, *settings), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (killed / "checkpoints" / "step-000006").exists():
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert latest_checkpoint(killed) is not None
    subprocess.run([*_train_command(shards, killed, *settings), "--resume"], check=True, capture_output=True)
    assert _losses(killed) == _losses(tmp_path / "whole")
    records = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == sorted(set(steps)) == list(range(1, 11))  # each step once after the resume
    from safetensors.torch import load_file

    a = load_file(str(latest_checkpoint(tmp_path / "whole") / "model.safetensors"))
    b = load_file(str(latest_checkpoint(killed) / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(shards, tmp_path):
    settings = ["steps=3", "save_every=3", "eval_every=0", "shuffle=false"]
    single = _train_command(shards, tmp_path / "one", *settings, "batch_size=4")
    subprocess.run(single, check=True, capture_output=True)
    import socket

    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ddp = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port),
           "-m", "flatprep.pipelines.cli.train", "--data", str(shards), "--out-dir", str(tmp_path / "two"),
           *[a for o in [*MICRO, *settings, "batch_size=2"] for a in ("--set", o)]]
    done = subprocess.run(ddp, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-2000:]
    from safetensors.torch import load_file

    a = load_file(str(latest_checkpoint(tmp_path / "one") / "model.safetensors"))
    b = load_file(str(latest_checkpoint(tmp_path / "two") / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)


def test_a_copied_shards_folder_alone_trains_embeds_and_probes(shards, sample_bids, tmp_path):
    """shards/ is self-describing: clip length, mask, cleaning request and entities travel with it."""
    import csv

    from flatprep.pipelines.cli.embed import main as embed_main
    from flatprep.pipelines.cli.probe import main as probe_main

    copy = tmp_path / "gpu-node" / "shards"
    shutil.copytree(shards / "shards", copy)
    final = run(_config(copy, tmp_path / "run", "steps=2", "eval_every=2", "save_every=0"))
    assert "val_loss" in final
    config = read_config(latest_checkpoint(tmp_path / "run"))
    assert config["clean_options"]["target_tr"] == 1.0 and config["mask"]["shape"] == config["grid"]["shape"]
    assert embed_main([str(tmp_path / "run"), str(tmp_path / "emb")]) == 0  # no INPUT: the training shards
    table = read_embeddings(tmp_path / "emb" / "embeddings.h5")
    assert len(table["runs"]) == 4 and {r["shards"] for r in table["runs"]} == {str(copy)}
    assert {r["entities"]["task"] for r in table["runs"]} == {"rest", "motor"}
    assert table["clip_frames"] == config["clip_frames"]
    # The embeddings of the shard clips are those of the per-run files' frames (one reader, one preparation).
    encoder = Encoder.from_pretrained(tmp_path / "run")
    from flatprep.h5 import read_run

    first = table["runs"][0]
    frames = read_run(shards / first["source"]).frames
    torch.testing.assert_close(torch.from_numpy(encoder.embed_frames(frames).cls),
                               torch.from_numpy(table["clips_cls"][table["clips_run"] == 0]), rtol=1e-4, atol=1e-5)
    # Two subjects: only the per-clip task target can be cross-validated (each subject did both tasks); the
    # block targets are labelled from the events placed with the manifest's first_frame_s, then skipped.
    probe_args = [str(tmp_path / "emb"), str(copy), str(sample_bids), str(tmp_path / "probe"), "--folds", "2"]
    assert probe_main([*probe_args, "--trait", "no_such_column"]) == 2  # refused, naming the column
    assert not (tmp_path / "probe").exists()
    assert probe_main(probe_args) == 0
    with (tmp_path / "probe" / "probe.tsv").open() as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert "task (per clip)" in {row["target"] for row in rows}
    # The shards hold cleaned frames only; the means before cleaning come from the output folder when named.
    from flatprep.pipelines.cli.probe import _run_data

    assert _run_data(first, {}, None)["mean"] is None
    np.testing.assert_array_equal(_run_data(first, {}, shards)["mean"], read_run(shards / first["source"]).mean)
    assert {"trained encoder (class token)", "FC (Yeo-7, within clip)"} <= {row["features"] for row in rows}


# --------------------------------------------------------------------------- honest resumes and splits


def _copy_shards(shards, tmp_path, edit=None, *, record=True):
    """A copy of the training shards; ``edit(rows)`` may change manifest.tsv's rows in place, and with
    ``record`` splits.tsv follows them (as a regroup with --resplit would write it)."""
    copy = tmp_path / "data" / "shards"
    shutil.copytree(shards / "shards", copy)
    if edit is not None:
        _edit_manifest(copy, edit, record=record)
    return copy


def _edit_manifest(shard_dir, edit, *, record=True):
    from flatprep.shards import MANIFEST_COLUMNS, read_manifest
    from flatprep.tables import write_tsv

    rows, _ = read_manifest(shard_dir)
    edit(rows)
    write_tsv(shard_dir / "manifest.tsv", rows, MANIFEST_COLUMNS)
    if record:
        subjects = {row["subject"]: {"subject": row["subject"], "group": row["group"], "split": row["split"]}
                    for row in rows}
        write_tsv(shard_dir / "splits.tsv", list(subjects.values()), ["subject", "group", "split"])


def _relabel(subject, split):
    def edit(rows):
        for row in rows:
            if row["subject"] == subject:
                row["split"] = split
    return edit


def test_resume_applies_a_changed_schedule_and_records_it(shards, tmp_path):
    from flatprep.learn.train import build_scheduler

    base = ["steps=2", "save_every=2", "eval_every=0", "warmup_steps=1"]
    run(_config(shards, tmp_path / "run", *base))
    changed = _config(shards, tmp_path / "run", *base, "steps=4", "lr=0.01", "min_lr=0.001")
    run(changed, resume=True)
    # The logged lr after step 3 is the new schedule's: as if the run had used lr=0.01 over 4 steps.
    reference = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=changed.lr)
    scheduler = build_scheduler(reference, changed)
    for _ in range(3):
        reference.step()
        scheduler.step()
    lrs = {json.loads(line)["step"]: json.loads(line).get("lr") for line in (tmp_path / "run" / "metrics.jsonl")
           .read_text().splitlines()}
    assert lrs[3] == pytest.approx(scheduler.get_last_lr()[0]) and lrs[3] > 0.002
    saved = read_config(latest_checkpoint(tmp_path / "run"))
    assert latest_checkpoint(tmp_path / "run").name == "step-000004"
    assert saved["train"]["lr"] == 0.01 and saved["train"]["steps"] == 4
    assert saved["resumes"] == [{"step": 2, "changed": {"lr": [0.001, 0.01], "min_lr": [1e-05, 0.001],
                                                        "steps": [2, 4]}}]
    assert "lr = 0.01" in (tmp_path / "run" / "config.toml").read_text().splitlines()


@pytest.mark.parametrize("override, key, old, new, restore", [
    ("batch_size=4", "batch_size", "2", "4", "batch_size=2"),
    ("normalize=none", "normalize", "'frame'", "'none'", "normalize=frame"),
    ("model_args.tubelet=8", "model_args", r"\{'tubelet': 4\}", r"\{'tubelet': 8\}", "model_args.tubelet=4")])
def test_resume_refuses_a_changed_input_or_architecture_naming_it(shards, tmp_path, override, key, old, new, restore):
    base = ["steps=1", "save_every=1", "eval_every=0"]
    run(_config(shards, tmp_path / "run", *base))
    before = (tmp_path / "run" / "config.toml").read_text()
    with pytest.raises(TrainConfigError, match=rf"step-000001: --resume cannot change {key} \({old} in the "
                                               rf"checkpoint, {new} now\).*resume with {restore}, or start a new "
                                               "run in another out_dir"):
        run(_config(shards, tmp_path / "run", *base, "steps=2", override), resume=True)
    assert (tmp_path / "run" / "config.toml").read_text() == before  # it never says what did not happen


def test_resume_refuses_shards_whose_splits_or_runs_changed(shards, tmp_path):
    data = _copy_shards(shards, tmp_path)
    base = ["steps=1", "save_every=1", "eval_every=0"]
    run(_config(data, tmp_path / "run", *base))
    from flatprep.shards import read_manifest

    original = read_manifest(data)[0]

    def swap(rows):  # a regroup with --resplit that swapped the two subjects
        for row in rows:
            row["split"] = {"train": "val", "val": "train"}[row["split"]]
    _edit_manifest(data, swap)
    was = {row["subject"]: row["split"] for row in original}
    moved = ", ".join(f"sub-{s} {was[s]}->{ {'train': 'val', 'val': 'train'}[was[s]]}" for s in sorted(was))
    with pytest.raises(TrainConfigError, match=rf"differs from the shards this run started on \(2 subject\(s\) "
                                               rf"changed split \({moved}\)"):
        run(_config(data, tmp_path / "run", *base, "steps=2"), resume=True)

    def rewrite(rows):  # back to the old splits; the same names, another run file's content
        rows[:] = [dict(row) for row in original]
        rows[0]["source_sha256"] = "0" * 64
    _edit_manifest(data, rewrite)
    with pytest.raises(TrainConfigError, match=rf"1 run file\(s\) changed content \({original[0]['run']}\)"):
        run(_config(data, tmp_path / "run", *base, "steps=2"), resume=True)


def test_a_subject_in_two_splits_is_refused_before_training(shards, tmp_path):
    def edit(rows):  # manifest.tsv tampered with: splits.tsv still says otherwise
        rows[0]["split"] = "val" if rows[0]["split"] == "train" else "train"
    data = _copy_shards(shards, tmp_path, edit, record=False)
    with pytest.raises(TrainConfigError, match=r"shards/manifest.tsv: subject \d+ appears in several splits "
                                               r"\(train, val\) \(and 1 more\); .*flatprep-validate"):
        run(_config(data, tmp_path / "run", "steps=1"))
    assert not (tmp_path / "run").exists()


def test_validation_smaller_than_a_batch_is_scored_with_a_warning(shards, tmp_path, caplog):
    from flatprep.learn.data import ShardIndex

    def edit(rows):  # the validation subject's motor run moved to a third subject in test: its rest run validates
        for row in rows:
            if row["split"] == "val" and row["task"] == "motor":
                row.update(subject="03", group="sub-03", split="test")
    data = _copy_shards(shards, tmp_path, edit)
    n_train, n_val = len(ShardIndex.read(data, split="train")), len(ShardIndex.read(data, split="val"))
    assert 0 < n_val < n_train
    with caplog.at_level("WARNING"):
        final = run(_config(data, tmp_path / "run", "steps=1", "eval_every=1", "save_every=0",
                            f"batch_size={n_val + 1}", "eval_batches=4"))
    assert f"the 'val' split holds {n_val} clip(s), fewer than batch_size={n_val + 1}" in caplog.text
    assert np.isfinite(final["val_loss"]) and np.isfinite(final["val_zero_loss"])
    with pytest.raises(TrainConfigError, match=rf"the 'train' split holds {n_train} clip\(s\) per rank, fewer than "
                                               rf"batch_size={n_train + 1}, so no step could run"):
        run(_config(data, tmp_path / "big", "steps=1", f"batch_size={n_train + 1}"))


def test_an_empty_val_split_trains_without_validation(shards, tmp_path, caplog):
    def edit(rows):
        for row in rows:
            row["split"] = "test" if row["split"] == "val" else row["split"]
    data = _copy_shards(shards, tmp_path, edit)
    with caplog.at_level("WARNING"):
        final = run(_config(data, tmp_path / "run", "steps=2", "eval_every=1", "save_every=0"))
    assert "the 'val' split holds no clip; training goes on without validation" in caplog.text
    assert final["step"] == 2 and "val_loss" not in final


def test_resume_settings_are_each_refused_or_applied():
    """Every setting is classified: a new one must say whether a resume may change it."""
    from flatprep.learn.resume import RESUME_APPLIED, RESUME_REFUSED
    from flatprep.learn.train import TrainConfig

    fields = set(TrainConfig().to_dict())
    assert fields == set(RESUME_REFUSED) | set(RESUME_APPLIED)
    assert not set(RESUME_REFUSED) & set(RESUME_APPLIED)


def test_a_checkpoint_without_a_data_record_resumes_with_a_warning(shards, tmp_path, caplog):
    base = ["steps=1", "save_every=1", "eval_every=0"]
    run(_config(shards, tmp_path / "run", *base))
    config_json = latest_checkpoint(tmp_path / "run") / "config.json"
    saved = json.loads(config_json.read_text())
    del saved["data"]  # as written before checkpoints recorded their shards
    config_json.write_text(json.dumps(saved))
    with caplog.at_level("WARNING"):
        run(_config(shards, tmp_path / "run", *base, "steps=2"), resume=True)
    assert "written before checkpoints recorded their data; cannot check" in caplog.text
    from flatprep.shards import read_manifest

    recorded = read_config(latest_checkpoint(tmp_path / "run"))["data"]["splits"]
    assert recorded == {row["subject"]: row["split"] for row in read_manifest(shards / "shards")[0]}
    assert sorted(recorded.values()) == ["train", "val"]


def test_a_model_that_differs_from_the_checkpoint_names_each_setting(tmp_path):
    from flatprep.learn.train import _check_same_model

    saved = {"img_size": [112, 288], "embed_dim": 64, "tubelet": 4}
    with pytest.raises(TrainConfigError, match=r"step-000002: the checkpoint's model differs from this config "
                                               r"\(img_size \[112, 288\] in the checkpoint, \[224, 560\] here\)"):
        _check_same_model(tmp_path / "step-000002", saved, saved | {"img_size": [224, 560]})


def test_the_command_line_refuses_a_resume_in_one_line(shards, tmp_path, caplog):
    from flatprep.pipelines.cli.train import main

    args = ["--data", str(shards), "--out-dir", str(tmp_path / "run"),
            *[a for o in [*MICRO, "steps=1", "save_every=1", "eval_every=0"] for a in ("--set", o)]]
    assert main(args) == 0
    caplog.clear()
    assert main([*args, "--resume", "--set", "lr=0.1", "--set", "batch_size=4"]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "\n" not in errors[0] and "cannot change batch_size (2 in the checkpoint" in errors[0]
    assert "lr = 0.001" in (tmp_path / "run" / "config.toml").read_text().splitlines()
