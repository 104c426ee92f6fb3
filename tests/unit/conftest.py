"""Fixtures the unit tests share: a monitoring reference fitted on synthetic digits."""

import numpy as np
import pytest

from common.reference import fit_reference
from tests.helpers import synthetic_digits


@pytest.fixture(scope="module")
def reference():
    images, labels = synthetic_digits(1000, 0, thickness=3)
    rng = np.random.default_rng(1)
    embeddings = rng.normal(size=(1000, 16)) + labels[:, None] * 0.5
    logits = rng.normal(size=(1000, 10))
    logits[np.arange(1000), labels] += 6
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return fit_reference(images, labels, probabilities, embeddings, seed=0)
