"""Sample subjects: a deterministic simulated BIDS + fMRIPrep-style dataset with ground truth.

``simulate`` holds the signal model (smooth maps on the sphere, network time
courses, task blocks, motion, noise); ``generate`` writes it as files. Tests,
the demo and benchmarks use it; nothing else in flatprep depends on it.
"""

from ..exceptions import SampleError
from .generate import (
    DEFAULT_DURATION,
    DEFAULT_N_SUBJECTS,
    DEFAULT_SPACES,
    DEFAULT_TASKS,
    GROUND_TRUTH,
    KNOWN_TASKS,
    LAYOUTS,
    SAMPLE_SPACES,
    SampleResult,
    check_sample_options,
    write_sample_dataset,
)

__all__ = [
    "DEFAULT_DURATION", "DEFAULT_N_SUBJECTS", "DEFAULT_SPACES", "DEFAULT_TASKS", "GROUND_TRUTH",
    "KNOWN_TASKS", "LAYOUTS", "SAMPLE_SPACES", "SampleError", "SampleResult", "check_sample_options",
    "write_sample_dataset",
]
