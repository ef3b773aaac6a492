"""Counter-based randomness for the data order: every draw is a hash of (seed, purpose, counter, index).

Nothing is stateful, so any process can compute the rows of any step at any time (multi-host runs,
restarts) and asking for a subset of rows gives exactly those rows of the full answer. The hash is
SplitMix64's finaliser in plain uint64 arithmetic, so the order does not depend on NumPy's Generator
algorithms, which NumPy does not promise to keep across versions.
"""

from __future__ import annotations

import zlib

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on a uint64 array (array arithmetic wraps silently, as intended)."""
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def hash64(seed: int, purpose: str, counter: int, index: np.ndarray) -> np.ndarray:
    """A well-mixed uint64 per element of `index`; seed, counter and index must be non-negative."""
    index = np.asarray(index, np.uint64)
    h = np.zeros(index.shape, np.uint64)
    for word in (seed, zlib.crc32(purpose.encode()), counter):
        h = _mix((h ^ np.uint64(word)) + _GOLDEN)
    return _mix((h ^ index) + _GOLDEN)


def uniform(seed: int, purpose: str, counter: int, index: np.ndarray) -> np.ndarray:
    """Floats in [0, 1) with 53 random bits, one per element of `index`."""
    return (hash64(seed, purpose, counter, index) >> np.uint64(11)).astype(np.float64) * 2.0**-53


def permutation(seed: int, purpose: str, counter: int, n: int) -> np.ndarray:
    """A permutation of range(n): the indices sorted by their hashes."""
    return np.argsort(hash64(seed, purpose, counter, np.arange(n)), kind="stable")
