"""The digit CNN: the original mlops-demo shape (4 conv layers with batch norm, 512-unit dense), improved."""

from __future__ import annotations

import keras
from keras import layers

from common.images import IMAGE_SIDE, NUM_CLASSES, PIXELS
from common.reference import EMBEDDING_LAYER


def build_cnn(augment: bool = True, dropout: float = 0.4, batch_norm_momentum: float = 0.9) -> keras.Model:
    """A CNN taking float32 (N, 784) grey levels 0..255 and returning 10 class probabilities.

    Flat input keeps MLflow's scoring bodies (dataframe_split with 784 columns, instances,
    inputs) valid as they are. The 512-unit layer is named `embedding` for monitoring.
    `batch_norm_momentum` 0.9, not Keras' 0.99: the slower moving statistics lag the weights while the
    rate is high, and the model scored near chance on MNIST test for most of its first epoch.
    """
    inputs = keras.Input((PIXELS,), name="pixels")
    x = layers.Reshape((IMAGE_SIDE, IMAGE_SIDE, 1))(inputs)
    x = layers.Rescaling(1.0 / 255)(x)
    if augment:  # active in training only; identity when scoring
        x = layers.RandomRotation(0.04, fill_mode="constant")(x)
        x = layers.RandomTranslation(0.08, 0.08, fill_mode="constant")(x)
    for filters in (32, 64):
        for _ in range(2):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
            x = layers.BatchNormalization(momentum=batch_norm_momentum)(x)
            x = layers.ReLU()(x)
        x = layers.MaxPooling2D()(x)
        x = layers.Dropout(0.25)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(512, use_bias=False)(x)
    x = layers.BatchNormalization(momentum=batch_norm_momentum)(x)
    x = layers.ReLU(name=EMBEDDING_LAYER)(x)
    x = layers.Dropout(dropout)(x)
    outputs = layers.Dense(NUM_CLASSES, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="digits_cnn")


def compile_cnn(model: keras.Model, learning_rate: float, total_steps: int) -> None:
    """Adam with a cosine-decayed learning rate over the whole run."""
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(total_steps, 1))
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
