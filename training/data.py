"""How training splits MNIST train: shared by the Keras and Spark jobs and the reference."""

from __future__ import annotations

import numpy as np

from common.datasets import Digits


def split_train_validation(digits: Digits, validation_size: int, seed: int, limit: int | None) -> tuple[Digits, Digits]:
    """Shuffle with `seed`, hold out `validation_size` for validation, keep at most `limit` for training."""
    if validation_size >= len(digits):
        raise ValueError(f"validation_size {validation_size} leaves no training data out of {len(digits)} images")
    order = np.random.default_rng(seed).permutation(len(digits))
    validation, train = order[:validation_size], order[validation_size:]
    return digits.subset(train[:limit]), digits.subset(validation)
