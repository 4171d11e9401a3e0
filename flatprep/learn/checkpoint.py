"""Checkpoints as safetensors + JSON (no pickle), written atomically.

A checkpoint is a folder::

    step-000100/
        model.safetensors        model weights (unwrapped from DDP)
        optimizer.safetensors    optimizer state tensors, keyed "state.<param index>.<name>"
        rng.safetensors          torch RNG states (CPU, and CUDA where present)
        state.json               step, epoch, batches consumed in the epoch, scheduler state,
                                 optimizer hyper-parameters, Python and NumPy RNG states
        config.json              resolved training config, model config, grid, flatprep version

It is written to a hidden temporary folder and renamed, then ``latest`` (a
text file naming the folder) is replaced, so a kill at any moment leaves the
previous checkpoint usable.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..atomic import write_text
from ..exceptions import CheckpointError


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if torch.is_tensor(value):
                tensors[f"state.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    state: dict = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for key, value in meta["scalars"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(folder: str | os.PathLike, *, model: torch.nn.Module, optimizer, scheduler, config: dict,
                    progress: dict) -> Path:
    """Write a checkpoint folder atomically and point ``latest`` at it.

    Parameters
    ----------
    folder : path
        The checkpoint folder to create, e.g. ``run/checkpoints/step-000100``.
    config : dict
        JSON-ready description (training config, model config, grid).
    progress : dict
        JSON-ready position: step, epoch, batches consumed in the epoch.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        _write_checkpoint_files(tmp, model=model, optimizer=optimizer, scheduler=scheduler, config=config,
                                progress=progress)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
        write_text(folder.parent / "latest", folder.name + "\n")
    except OSError as err:  # disk full, quota, permissions: no partial checkpoint, one line
        shutil.rmtree(tmp, ignore_errors=True)
        name = getattr(err, "filename", None) or folder
        raise CheckpointError(f"{name}: cannot write the checkpoint ({err.strerror or err}); "
                              f"{folder.name} was not saved, the previous checkpoint stays latest") from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _write_checkpoint_files(tmp: Path, *, model, optimizer, scheduler, config: dict, progress: dict) -> None:
    """The five files of a checkpoint into ``tmp``; an OSError names the file being written."""
    from safetensors.torch import save_file

    def write(name: str, save) -> None:
        try:
            save(str(tmp / name))
        except OSError as err:
            if not getattr(err, "filename", None):
                err.filename = str(tmp.parent / tmp.name.split(".")[1] / name)
            raise

    write("model.safetensors", lambda path: save_file(
        {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, path))
    tensors, optimizer_meta = _optimizer_tensors(optimizer)
    write("optimizer.safetensors", lambda path: save_file(tensors, path))
    rng = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng |= {f"torch_cuda_{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    write("rng.safetensors", lambda path: save_file(rng, path))
    python_state = random.getstate()
    state = {
        "progress": progress, "scheduler": scheduler.state_dict(), "optimizer": optimizer_meta,
        "python_rng": [python_state[0], list(python_state[1]), python_state[2]],
        "numpy_rng": np.random.get_state(legacy=False),
    }
    write("state.json", lambda path: Path(path).write_text(json.dumps(state, default=_json_default)))
    write("config.json", lambda path: Path(path).write_text(
        json.dumps(config, indent=2, sort_keys=True, default=_json_default)))
    for path in tmp.iterdir():
        os.chmod(path, 0o644)
    os.chmod(tmp, 0o755)


def _json_default(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The folder that ``run_dir/checkpoints/latest`` names, or None."""
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if not pointer.exists():
        return None
    folder = pointer.parent / pointer.read_text().strip()
    return folder if folder.is_dir() else None


#: Files every checkpoint holds.
CHECKPOINT_FILES = ("model.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json", "config.json")


def _read_file(folder: str | os.PathLike, name: str):
    """One file of a checkpoint folder, read whole: a dict (``.json``) or a dict of tensors (``.safetensors``).

    Raises
    ------
    CheckpointError
        Naming the file: missing, truncated or corrupt.
    """
    from safetensors.torch import load_file

    path = Path(folder) / name
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; not a complete flatprep checkpoint folder")
    try:
        return json.loads(path.read_text()) if name.endswith(".json") else load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for truncated files
        raise CheckpointError(f"{path}: corrupt or truncated ({type(err).__name__}: {err})") from err


def check_checkpoint(folder: str | os.PathLike) -> None:
    """Raise :class:`CheckpointError` naming the first missing, truncated or corrupt file of a checkpoint."""
    for name in CHECKPOINT_FILES:
        _read_file(folder, name)


def resume_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The checkpoint to resume from: the newest valid one, never a silent fresh start.

    ``checkpoints/latest`` names the newest; when its files are corrupt or
    truncated, a warning names the bad file and the next older ``step-*``
    folder is tried. Returns None only when the run folder holds no
    checkpoint at all (nothing to resume: a fresh run).

    Raises
    ------
    CheckpointError
        ``latest`` names a folder that does not exist, or no checkpoint is valid.
    """
    import logging

    root = Path(run_dir) / "checkpoints"
    pointer = root / "latest"
    if not pointer.exists():
        if any(root.glob("step-*")):
            raise CheckpointError(f"{pointer}: missing although {root} holds checkpoints; write the name of the "
                                  "checkpoint folder to resume from into it")
        return None
    newest = root / pointer.read_text().strip()
    if not newest.is_dir():
        raise CheckpointError(f"{pointer}: names {newest.name}, which does not exist; restore it, point latest at "
                              "another step-* folder, or start a new run in another out_dir")
    candidates = [newest] + sorted((p for p in root.glob("step-*") if p.is_dir() and p.name < newest.name),
                                   reverse=True)
    problems = []
    for folder in candidates:
        try:
            check_checkpoint(folder)
        except CheckpointError as err:
            logging.getLogger(__name__).warning("skipping checkpoint %s", err)
            problems.append(str(err))
            continue
        return folder
    raise CheckpointError(f"{root}: no valid checkpoint to resume from ({'; '.join(problems)})")


def read_config(folder: str | os.PathLike) -> dict:
    """config.json of a checkpoint folder."""
    return _read_file(folder, "config.json")


def load_model_weights(folder: str | os.PathLike, model: torch.nn.Module) -> None:
    """Load ``model.safetensors`` into ``model`` (strict: every key and shape must match).

    Raises
    ------
    CheckpointError
        One line naming the file and the first tensors whose shapes differ, or the missing and extra keys.
    """
    weights = _read_file(folder, "model.safetensors")
    expected = model.state_dict()
    differ = [f"{key} {tuple(weights[key].shape)} in the file, {tuple(expected[key].shape)} in the model"
              for key in expected if key in weights and weights[key].shape != expected[key].shape
              and weights[key].numel() != expected[key].numel()]
    if differ:
        raise CheckpointError(f"{Path(folder) / 'model.safetensors'}: weights of another model size "
                              f"({'; '.join(differ[:3])}{'; ...' if len(differ) > 3 else ''}); config.json and "
                              "model.safetensors must come from the same checkpoint")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{Path(folder) / 'model.safetensors'}: weights do not match the model "
                              f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")


def load_training_state(folder: str | os.PathLike, *, model, optimizer, scheduler) -> dict:
    """Restore model, optimizer, scheduler and RNG states; return the saved progress."""
    load_model_weights(folder, model)
    state = _read_file(folder, "state.json")
    _restore_optimizer(optimizer, _read_file(folder, "optimizer.safetensors"), state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rng = _read_file(folder, "rng.safetensors")
    torch.set_rng_state(rng["torch_cpu"])
    cuda = [rng[k] for k in sorted(rng) if k.startswith("torch_cuda_")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, values, gauss = state["python_rng"]
    random.setstate((version, tuple(values), gauss))
    numpy_state = state["numpy_rng"]
    np.random.set_state(numpy_state)
    return state["progress"]
