"""Data: the ``Sample`` type, benchmark readers and writers, scoring, and the synthetic task.

``load_samples(source)`` detects the format (V* folder, HR-Bench TSV,
MME-RealWorld JSON, DeepEyes parquet) and returns a list of :class:`Sample`
with a ``.report`` of what was loaded and skipped.
"""

from mapo.data.sample import (
    DEFAULT_MAX_PIXELS,
    Box,
    LoadIssue,
    LoadReport,
    LoadResult,
    Sample,
    open_image,
    shuffle_options,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "Box",
    "LoadIssue",
    "LoadReport",
    "LoadResult",
    "Sample",
    "load_samples",
    "open_image",
    "shuffle_options",
]


def __getattr__(name):
    # Readers import pyarrow; keep `import mapo.data` light for the policy and verifier.
    if name == "load_samples":
        from mapo.data.benchmarks import load_samples

        return load_samples
    raise AttributeError(f"module 'mapo.data' has no attribute {name!r}")
