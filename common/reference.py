"""The monitoring reference of a model version, and the per-image foreign-digit score; numpy only.

Fitted once per model version on held-out MNIST (the training job's validation split, never the
training data): one half fits the distances, the other calibrates their tails, the thresholds and
the confidence-to-accuracy map. A version retrained on the traffic of a drift incident also takes in
that traffic's flagged images it never trained on (`ServedImages`), mixed with MNIST at the share
they came in: they join the distances and the samples as components of their own, so that the traffic
the version was trained for is no longer foreign to it; accuracy stays calibrated on labeled MNIST
alone. Serving scores each image with it; monitoring compares windows with its samples.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from functools import cached_property
from pathlib import Path

import numpy as np

from common.images import NUM_CLASSES, image_statistics
from common.quality import fit_quality_bounds

EMBEDDING_LAYER = "embedding"  # the model layer whose output the reference describes
PROJECTION_DIMS = 8
FOREIGN_FALSE_ALARM_RATE = 0.01  # share of held-out MNIST a threshold flags as foreign
MIN_COMPONENT_IMAGES = 5  # served images of one predicted class needed for a component of their own
MIN_MIXTURE_MNIST = 300  # held-out MNIST images a mixture keeps at least: every class's mean stays well measured
CONFIDENCE_BINS = np.array([0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999, 1.0001])


@dataclass
class Reference:
    """Everything monitoring and serving need from held-out MNIST (and served images, see the module) for one
    model version."""

    statistics_mean: np.ndarray  # (8,)
    statistics_precision: np.ndarray  # (8, 8)
    class_means: np.ndarray  # (K, D) means per class, then per served images' predicted class; D = 0 without embedding
    embedding_precision: np.ndarray  # (D, D)
    projection_mean: np.ndarray  # (D,)
    projection: np.ndarray  # (8, D) top principal directions of the embeddings
    statistics_distance_tail: np.ndarray  # sorted calibration distances
    embedding_distance_tail: np.ndarray  # sorted calibration distances (empty without embeddings)
    foreign_threshold: np.ndarray  # () score above which an image is flagged foreign (1% of the fitted images)
    confidence_bin_accuracy: np.ndarray  # (len(CONFIDENCE_BINS) - 1,) accuracy per confidence bin
    sample_confidence: np.ndarray  # calibration half: top probabilities
    sample_predicted: np.ndarray  # calibration half: predicted classes
    sample_foreign_score: np.ndarray
    sample_projection: np.ndarray  # (n, 8)
    class_shares: np.ndarray  # (10,) predicted-class mix on held-out MNIST
    accuracy: np.ndarray  # () held-out accuracy
    # (5,) data-quality bounds (common.quality); empty in references written before they existed: no causes named
    quality_bounds: np.ndarray = field(default_factory=lambda: np.zeros(0))
    # () share of served images in the samples and distances (0: held-out MNIST alone, as before they existed)
    served_share: np.ndarray = field(default_factory=lambda: np.array(0.0))

    @property
    def has_embeddings(self) -> bool:
        return self.class_means.shape[1] > 0

    @property
    def threshold(self) -> float:
        return float(self.foreign_threshold)

    @cached_property
    def whitening(self) -> tuple[np.ndarray, np.ndarray]:
        """(W, class means @ W) with W W^T = the embedding precision: one product per call instead of ten."""
        factor = np.linalg.cholesky(self.embedding_precision)
        return factor.astype(np.float32), self.class_means @ factor


def _mahalanobis(vectors: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    centred = vectors - mean
    return np.einsum("ij,jk,ik->i", centred, precision, centred)


def _class_distance(embeddings: np.ndarray, whitening: np.ndarray, whitened_means: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distance to the nearest class mean under a shared covariance (Lee et al., 2018)."""
    return _component_distances(embeddings, whitening, whitened_means).min(axis=1)


def _component_distances(embeddings: np.ndarray, whitening: np.ndarray, whitened_means: np.ndarray) -> np.ndarray:
    """(N, K) squared Mahalanobis distances to each component mean under the shared covariance."""
    # The (N, D) x (D, D) product in float32, as the embeddings come: 1.1 ms against 2.5 ms in float64 for 256
    # images on one core, distances within 1e-6 of float64's; the rest in float64.
    whitened = (embeddings.astype(np.float32, copy=False) @ whitening).astype(np.float64)  # `whitening` is float32
    # |w - m|^2 = |w|^2 - 2 w.m + |m|^2: one product instead of an (N, 10, D) difference, 6x faster at 32 images
    return (whitened * whitened).sum(axis=1)[:, None] - 2 * whitened @ whitened_means.T + (whitened_means**2).sum(axis=1)


def _tail_score(sorted_reference: np.ndarray, values: np.ndarray) -> np.ndarray:
    """-log of the smoothed share of reference values at or above each value: 0 typical, large rare."""
    above = len(sorted_reference) - np.searchsorted(sorted_reference, values, side="left")
    return -np.log((above + 1) / (len(sorted_reference) + 1))


def foreign_scores(
    reference: Reference, images: np.ndarray, embeddings: np.ndarray | None, statistics: np.ndarray | None = None
) -> np.ndarray:
    """Per-image foreign-digit score: the summed tail scores of the image-statistics and embedding distances
    (`statistics`: the images' `image_statistics` when the caller has them already)."""
    return scores_and_learned(reference, images, embeddings, statistics)[0]


def scores_and_learned(
    reference: Reference, images: np.ndarray, embeddings: np.ndarray | None, statistics: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """`foreign_scores`, and per image whether its nearest component is one of the served images' (unlike held-out
    MNIST, like the incident traffic the version was trained for); None when the reference has no such component."""
    statistics = image_statistics(images) if statistics is None else statistics
    score = _tail_score(
        reference.statistics_distance_tail, _mahalanobis(statistics, reference.statistics_mean, reference.statistics_precision)
    )
    learned = None
    if reference.has_embeddings and embeddings is not None:
        distances = _component_distances(embeddings, *reference.whitening)
        score = score + _tail_score(reference.embedding_distance_tail, distances.min(axis=1))
        if len(reference.class_means) > NUM_CLASSES:
            learned = distances.argmin(axis=1) >= NUM_CLASSES
    return score, learned


def project(reference: Reference, embeddings: np.ndarray | None) -> np.ndarray | None:
    """Embeddings onto the reference's top principal directions: compact, for drift tests."""
    if not reference.has_embeddings or embeddings is None:
        return None
    return (embeddings - reference.projection_mean) @ reference.projection.T


@dataclass(frozen=True)
class ServedImages:
    """Served images a retrained version is referenced on besides held-out MNIST, as that version sees them."""

    images: np.ndarray  # (n, 28, 28) uint8, none of them trained on
    probabilities: np.ndarray  # (n, 10)
    embeddings: np.ndarray | None  # (n, D)
    share: float  # the share of the traffic they stand for, in (0, 1)


def mixture_sizes(mnist: int, served: int, share: float) -> tuple[int, int]:
    """How many MNIST and served images make a mixture with `share` of served ones, as large as the two allow;
    it keeps at least MIN_MIXTURE_MNIST of MNIST's, at a lower share when the served images are too few for it."""
    if not 0 < share < 1:
        raise ValueError(f"served share {share}: expected a share strictly between 0 and 1")
    mnist_needed = round(served * (1 - share) / share)
    if min(mnist, MIN_MIXTURE_MNIST) <= mnist_needed <= mnist:
        return mnist_needed, served
    mnist_count = min(mnist, max(mnist_needed, MIN_MIXTURE_MNIST))
    return mnist_count, min(served, round(mnist_count * share / (1 - share)))


def fit_reference(
    images: np.ndarray,
    labels: np.ndarray,
    probabilities: np.ndarray,
    embeddings: np.ndarray | None,
    seed: int = 0,
    shrinkage: float = 0.01,
    served: ServedImages | None = None,
) -> Reference:
    """Fit on one half of held-out MNIST, calibrate tails, thresholds and accuracy on the other half; with `served`,
    the distances, tails and samples come from MNIST mixed with them (see the module), accuracy from MNIST alone."""
    order = np.random.default_rng(seed).permutation(len(images))
    mnist_calibrate = order[len(order) // 2 :]
    correct = probabilities.argmax(axis=1) == labels
    mnist_images, mnist_confidence = images, probabilities.max(axis=1)
    components = labels
    served_share = 0.0
    if served is not None and len(served.images):
        if (embeddings is None) != (served.embeddings is None):
            raise ValueError("served images need embeddings exactly when the held-out images have them")
        rng = np.random.default_rng([seed, 1])
        mnist_count, served_count = mixture_sizes(len(images), len(served.images), served.share)
        from_mnist = np.sort(rng.choice(len(images), mnist_count, replace=False))
        from_served = np.sort(rng.choice(len(served.images), served_count, replace=False))
        images = np.concatenate([images[from_mnist], served.images[from_served]])
        # a served image's component is its predicted class, apart from MNIST's: the two domains keep their own means
        components = np.concatenate([labels[from_mnist], NUM_CLASSES + served.probabilities[from_served].argmax(axis=1)])
        probabilities = np.concatenate([probabilities[from_mnist], served.probabilities[from_served]])
        if embeddings is not None and served.embeddings is not None:
            embeddings = np.concatenate([embeddings[from_mnist], served.embeddings[from_served]])
        served_share = served_count / len(images)
        order = rng.permutation(len(images))
    fit, calibrate = order[: len(order) // 2], order[len(order) // 2 :]
    statistics = image_statistics(images)
    statistics_mean = statistics[fit].mean(axis=0)
    statistics_precision = np.linalg.inv(np.cov(statistics[fit].T) + 1e-6 * np.eye(statistics.shape[1]))
    dims = 0 if embeddings is None else embeddings.shape[1]
    class_means = np.zeros((NUM_CLASSES, dims))
    embedding_precision = np.zeros((dims, dims))
    projection_mean, projection = np.zeros(dims), np.zeros((PROJECTION_DIMS, dims))
    embedding_tail = np.zeros(0)
    if embeddings is not None:
        embeddings = embeddings.astype(np.float64)
        fit_components = components[fit]
        counts = np.bincount(fit_components, minlength=NUM_CLASSES)
        # every MNIST class, then the served components with enough images for a mean
        kept = [c for c in range(len(counts)) if c < NUM_CLASSES or counts[c] >= MIN_COMPONENT_IMAGES]
        if (counts[:NUM_CLASSES] == 0).any():
            missing = np.flatnonzero(counts[:NUM_CLASSES] == 0).tolist()
            raise ValueError(f"held-out digits of class(es) {missing} are missing from the reference's fit half")
        class_means = np.stack([embeddings[fit][fit_components == c].mean(axis=0) for c in kept])
        member = np.isin(fit_components, kept)
        centred = embeddings[fit][member] - class_means[np.searchsorted(kept, fit_components[member])]
        covariance = centred.T @ centred / len(centred)
        covariance += shrinkage * np.trace(covariance) / dims * np.eye(dims)
        embedding_precision = np.linalg.inv(covariance)
        projection_mean = embeddings[fit].mean(axis=0)
        _, _, directions = np.linalg.svd(embeddings[fit] - projection_mean, full_matrices=False)
        projection = directions[:PROJECTION_DIMS]
        factor = np.linalg.cholesky(embedding_precision)
        embedding_tail = np.sort(_class_distance(embeddings[calibrate], factor, class_means @ factor))
    statistics_tail = np.sort(_mahalanobis(statistics[calibrate], statistics_mean, statistics_precision))
    reference = Reference(
        statistics_mean,
        statistics_precision,
        class_means,
        embedding_precision,
        projection_mean,
        projection,
        statistics_tail,
        embedding_tail,
        np.array(0.0),
        np.zeros(len(CONFIDENCE_BINS) - 1),
        probabilities[calibrate].max(axis=1),
        probabilities[calibrate].argmax(axis=1),
        np.zeros(0),
        np.zeros((0, PROJECTION_DIMS)),
        np.zeros(NUM_CLASSES),
        np.array(0.0),
    )
    # Tail scores of the calibration half against itself are what serving will see on MNIST.
    calibration_scores = foreign_scores(reference, images[calibrate], None if embeddings is None else embeddings[calibrate])
    reference.sample_foreign_score = calibration_scores
    reference.foreign_threshold = np.array(np.quantile(calibration_scores, 1 - FOREIGN_FALSE_ALARM_RATE))
    # accuracy is known on labeled MNIST only: a served image's true class is not
    reference.confidence_bin_accuracy = _bin_accuracy(mnist_confidence[mnist_calibrate], correct[mnist_calibrate])
    reference.sample_projection = project(reference, None if embeddings is None else embeddings[calibrate])
    if reference.sample_projection is None:
        reference.sample_projection = np.zeros((0, PROJECTION_DIMS))
    reference.class_shares = np.bincount(probabilities.argmax(axis=1), minlength=NUM_CLASSES) / len(probabilities)
    reference.accuracy = np.array(correct.mean())
    reference.quality_bounds = fit_quality_bounds(mnist_images)
    reference.served_share = np.array(served_share)
    return reference


def _bin_accuracy(confidence: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """Accuracy per confidence bin, shrunk towards the bin's mean confidence where it holds few images."""
    bins = np.clip(np.digitize(confidence, CONFIDENCE_BINS) - 1, 0, len(CONFIDENCE_BINS) - 2)
    accuracy = np.zeros(len(CONFIDENCE_BINS) - 1)
    for index in range(len(accuracy)):
        members = bins == index
        prior = (CONFIDENCE_BINS[index] + min(CONFIDENCE_BINS[index + 1], 1.0)) / 2
        weight = 20.0  # pseudo-images of prior: keeps sparse bins near their confidence
        accuracy[index] = (correct[members].sum() + weight * prior) / (members.sum() + weight)
    return accuracy


def expected_accuracy(reference: Reference, confidence: np.ndarray) -> np.ndarray:
    """Label-free P(correct) per image from its top probability, calibrated on held-out MNIST."""
    bins = np.clip(np.digitize(confidence, CONFIDENCE_BINS) - 1, 0, len(CONFIDENCE_BINS) - 2)
    return reference.confidence_bin_accuracy[bins]


def save_reference(reference: Reference, path: str | Path) -> Path:
    path = Path(path)
    np.savez_compressed(path, **{entry.name: np.asarray(getattr(reference, entry.name)) for entry in fields(Reference)})
    return path


def load_reference(path: str | Path) -> Reference:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no monitoring reference here (the training job writes reference/reference.npz)")
    with np.load(path) as stored:
        required = [entry.name for entry in fields(Reference) if entry.default_factory is MISSING]
        missing = [name for name in required if name not in stored]
        if missing:
            raise ValueError(f"{path}: not a digitdrift reference (missing {', '.join(missing)})")
        return Reference(**{entry.name: stored[entry.name] for entry in fields(Reference) if entry.name in stored})
