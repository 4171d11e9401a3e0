"""Exceptions raised by flatprep for problems with user data or settings.

Each message names the file (where there is one), what was expected and
what was received, and how to fix it.
"""


class FlatprepError(Exception):
    """Base class of every error flatprep raises about inputs or settings."""


class HintMismatch(FlatprepError, TypeError):
    """A setting's value does not have the type its field names (caught inside
    :mod:`flatprep.config`, which reports it with the field's name)."""


class SurfaceSpaceError(FlatprepError, ValueError):
    """A surface array does not belong to any known surface space."""


class MissingDataError(FlatprepError, FileNotFoundError):
    """A surface or atlas file that ships inside a package cannot be found."""


class FlatmapError(FlatprepError, ValueError):
    """A flat template, grid or projection cannot be built or applied."""


class SurfaceFileError(FlatprepError, ValueError):
    """A GIFTI/CIFTI file is unreadable or holds the wrong kind of data."""


class CleaningError(FlatprepError, ValueError):
    """A BOLD run cannot be cleaned (bad TR, NaN values, too short, bad confounds)."""


class InputError(FlatprepError, ValueError):
    """A sidecar or table that accompanies the BOLD data is missing or malformed."""


class RunFileError(FlatprepError, ValueError):
    """A per-run flat-map file is missing, corrupt or inconsistent."""


class BIDSInputError(FlatprepError, ValueError):
    """The BIDS dataset or a derivative folder cannot be used."""


class SampleError(FlatprepError, ValueError):
    """Options of the sample generator are invalid (the message names the value and the fix)."""


class ShardOptionsError(FlatprepError, ValueError):
    """A group-level setting (shard size, clip length, compression, split ratios) is invalid."""


class ShardFormatError(FlatprepError, ValueError):
    """A training shard or its manifest is missing, corrupt or inconsistent."""


class ProbeError(FlatprepError, ValueError):
    """Probe inputs (features, targets, subjects, parcels) are inconsistent or unusable."""


class ModelError(FlatprepError, ValueError):
    """A model setting or a model input is invalid (the message names the value)."""


class CheckpointError(FlatprepError, ValueError):
    """A checkpoint folder is missing files, is corrupt or does not match the model."""


class TrainConfigError(FlatprepError, ValueError):
    """A training setting is unknown or of the wrong type."""


class LockError(FlatprepError, OSError):
    """A lock on a shared output folder is held by another job, or cannot be taken."""


class OutputWriteError(FlatprepError, OSError):
    """An output file cannot be written (disk full, quota, read-only folder); the message names the file."""


class VolumeFileError(FlatprepError, ValueError):
    """A volumetric BOLD file or brain mask is unreadable, not 4D, not in a supported MNI space, or mismatched."""


class OutputConflictError(FlatprepError, ValueError):
    """A rerun would replace an output made on another grid (pixel size, template) without ``--force``."""


class Interrupted(BaseException):
    """The command received SIGINT or SIGTERM and is stopping.

    A BaseException, like KeyboardInterrupt, so ``except Exception`` handlers
    (one run's failure must not stop the others) let it through.
    """

    def __init__(self, signum: int):
        import signal

        self.signum = signum
        self.name = signal.Signals(signum).name
        #: The shell convention: 128 + the signal number (130 for SIGINT, 143 for SIGTERM).
        self.exit_code = 128 + signum
        super().__init__(f"interrupted by {self.name}")
