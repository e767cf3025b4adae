"""A frame's fingerprint, for tests that pin data bit for bit."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd


def frame_digest(frame: pd.DataFrame) -> str:
    """Every bit of every column (name, dtype, values), independent of pandas' own hashing."""
    digest = hashlib.sha256()
    for name in frame.columns:
        values = np.ascontiguousarray(frame[name].to_numpy())
        digest.update(f"{name}:{values.dtype}:".encode())
        digest.update(values.tobytes())
    return digest.hexdigest()[:16]
