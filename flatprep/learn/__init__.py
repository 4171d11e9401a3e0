"""The torch side of flatprep: datasets over shards, the MAE, training, embeddings, probes.

``data`` streams shard clips, ``model`` is the masked autoencoder, ``train``
and ``checkpoint`` run and save pretraining, ``embed`` turns scans into
embeddings, ``probe`` and ``baselines`` evaluate them. Names import lazily
(``from flatprep.learn import FlatClipsStream``), so ``import flatprep.learn``
does not import torch until a name is used.
"""

from .._lazy import lazy_exports

_EXPORTS = {
    "ShardIndex": "data", "ShardReader": "data", "FlatClipsDataset": "data", "FlatClipsStream": "data",
    "normalize_frames": "data", "prepare_clips": "data", "DenseCollate": "data",
    "MAEConfig": "model", "MaskedAutoencoder": "model", "build_model": "model", "make_config": "model",
    "TrainConfig": "train", "resolve_config": "train", "run": "train", "unwrap": "train",
    "save_checkpoint": "checkpoint", "latest_checkpoint": "checkpoint", "read_config": "checkpoint",
    "resume_checkpoint": "checkpoint",
    "Encoder": "embed", "write_embeddings": "embed", "read_embeddings": "embed",
    "linear_probe": "probe", "compare_features": "probe", "fc_features": "probe",
    "clip_block_labels": "probe", "read_events": "probe", "random_init_encoder": "probe",
    "format_probe_table": "probe",
    "mean_map_features": "probe", "grid_parcels": "probe",
    "PCABaseline": "baselines",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = list(_EXPORTS)
