"""The emulator's "real model": a fixed logistic regression over the 29 ccfraud features.

Deterministic (weights come from a constant seed) so the same input always scores the same, and vectorised so
scoring a batch costs one matrix product — the capacity model, not the model, sets the emulator's latency.
"""

from __future__ import annotations

import functools

import numpy as np
import numpy.typing as npt

__all__ = ["FEATURES", "MODEL_NAME", "MODEL_SHA", "LogisticModel", "predict"]

FEATURES = 29
MODEL_NAME = "ccfraud"
_SEED = 20240417
# A strongly negative bias keeps typical (standardised, mean 0) rows near 0 and lets the heavy-tailed
# outliers of the synthetic set score high, roughly like the tutorial's fraud model.
_BIAS = -6.0
_SCALE = 0.4


def _weights() -> npt.NDArray[np.float64]:
    rng = np.random.default_rng(_SEED)
    return rng.normal(0.0, _SCALE, FEATURES)


MODEL_SHA = "e22a0faf3d5c8e4b7d4a2f9b1c6e3a8d0f5b2c7e9a1d4f6b8c0e2a4d6f8b0c2e"


class LogisticModel:
    """dense_1 = sigmoid(x · w + b) with fixed w, b."""

    def __init__(self) -> None:
        self.weights = _weights()
        self.weights.flags.writeable = False  # shared by every caller of predict(): keep it constant
        self.bias = _BIAS

    def predict(self, matrix: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Score an (n, 29) matrix; returns n floats in [0, 1]."""
        x = np.asarray(matrix, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != FEATURES:
            raise ValueError(f"expected an (n, {FEATURES}) matrix, got shape {x.shape}")
        z = x @ self.weights + self.bias
        # tanh form of the sigmoid: no overflow warnings for large |z|
        out: npt.NDArray[np.float64] = 0.5 * (1.0 + np.tanh(0.5 * z))
        return out


@functools.cache
def _shared_model() -> LogisticModel:
    return LogisticModel()


def predict(matrix: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Score with the (read-only, lazily built) shared model: same result as any LogisticModel()."""
    return _shared_model().predict(matrix)
