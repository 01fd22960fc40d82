"""The vectorized alias tables against DeepGNN's own `alias.Vose`, bit for bit, on the weight shapes
graphs have: uniform, heavy-tailed, integer counts, zeros, one dominant edge, all equal, and weights
within float32 rounding of their mean (where the float64 forecast misses most and the plain loop runs)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from deepgnn.graph_engine.snark.alias import Vose

from graph_engine.binary import vose_alias

Draw = Callable[[np.random.Generator, int], np.ndarray]


def _zeros(rng: np.random.Generator, n: int) -> np.ndarray:
    w = rng.random(n)
    w[rng.random(n) < 0.3] = 0
    return w


SHAPES: dict[str, Draw] = {
    "uniform": lambda rng, n: rng.random(n),
    "pareto": lambda rng, n: rng.pareto(1.2, n) + 0.01,
    "lognormal": lambda rng, n: rng.lognormal(0, 3, n),
    "counts": lambda rng, n: rng.integers(0, 5, n),
    "zeros": _zeros,
    "one dominant": lambda rng, n: np.where(np.arange(n) == n // 2, 1e6, 1),
    "equal": lambda rng, n: np.full(n, 0.3),
    "near mean": lambda rng, n: 1 + rng.normal(0, 1e-6, n),
    "all zero": lambda rng, n: np.zeros(n),  # DeepGNN's normalization gives NaN: every element keeps itself
}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n", [1, 2, 7, 1000, 40_000])
def test_alias_tables_are_deepgnns(shape: str, n: int) -> None:
    weights = SHAPES[shape](np.random.default_rng(n), n).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        theirs = Vose(list(range(n)), weights.copy())
    ours = vose_alias(weights.copy())
    if ours is None:
        assert (theirs.prob == 1).all()
        return
    alias, prob = ours
    assert prob.tobytes() == theirs.prob.tobytes()
    aliased = theirs.prob < 1  # the writer reads alias only there (Vose leaves the rest uninitialized)
    assert np.array_equal(alias[aliased], theirs.alias[aliased].astype(np.int64))
