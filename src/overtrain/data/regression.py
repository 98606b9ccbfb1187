"""Small supervised datasets for the double-descent studies: scikit-learn's digits and a synthetic teacher.

Both give a `RegressionData`: float64 inputs ``X`` (n x d) and targets ``Y`` (n x k) for a training and a
test split. Classification data (digits) carries integer labels and one-hot targets (Belkin et al. fit
one-hot targets with the squared loss); regression data (teacher) has ``k = 1`` and no labels.

- **digits** (`DigitsConfig`): the 1,797 8x8 images bundled inside scikit-learn (nothing is downloaded),
  64 pixel features standardised with the training split's mean and std, a seeded split into ``n_train``
  training and ``n_test`` test examples.
- **teacher** (`TeacherConfig`; docs/double_descent.md, "Data"): ``x ~ N(0, I_d)``, ``y = tanh(2·wᵀx) + 0.5·sin(x_1) + ε``,
  ``w ~ N(0, I/d)``, ``ε ~ N(0, noise_std²)`` on the training targets only.

**Label noise** (Nakkiran et al. 2020): with probability ``label_noise`` a training label is
replaced by a uniformly drawn *incorrect* class, once (fixed for every epoch and every model of a sweep);
test labels stay clean. ``noisy`` marks the corrupted training examples.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Literal

import numpy as np
from pydantic import Field

from overtrain.config import BaseConfig
from overtrain.errors import DataError
from overtrain.seed import numpy_rng


@dataclass(frozen=True)
class RegressionData:
    """A training and a test split.

    Attributes:
        X, Y: training inputs (n x d) and targets (n x k), float64.
        X_test, Y_test: test inputs and (clean) targets.
        labels, labels_test: integer classes (classification data) or None.
        noisy: boolean mask of training examples whose label noise replaced the class (or None).
    """

    X: np.ndarray
    Y: np.ndarray
    X_test: np.ndarray
    Y_test: np.ndarray
    labels: np.ndarray | None = None
    labels_test: np.ndarray | None = None
    noisy: np.ndarray | None = None

    @property
    def n(self) -> int:
        return self.X.shape[0]

    @property
    def d(self) -> int:
        return self.X.shape[1]

    @property
    def classes(self) -> int:
        """Output dimension k (classes of classification data, 1 for scalar regression)."""
        return self.Y.shape[1]

    def subset(self, n: int) -> RegressionData:
        """The first `n` training examples (a sample-wise sweep nests its training sets)."""
        if not 1 <= n <= self.n:
            raise DataError(f"subset of {n} training examples from {self.n}")
        cut = slice(0, n)
        return RegressionData(
            self.X[cut],
            self.Y[cut],
            self.X_test,
            self.Y_test,
            None if self.labels is None else self.labels[cut],
            self.labels_test,
            None if self.noisy is None else self.noisy[cut],
        )


def one_hot(labels: np.ndarray, classes: int) -> np.ndarray:
    out = np.zeros((len(labels), classes))
    out[np.arange(len(labels)), labels] = 1.0
    return out


def corrupt_labels(
    labels: np.ndarray, classes: int, p: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Labels with a fraction ~`p` replaced by a uniformly random *incorrect* class; and the mask."""
    noisy = rng.random(len(labels)) < p
    shift = rng.integers(1, classes, size=len(labels))  # 1..k-1: never the true class
    out = np.where(noisy, (labels + shift) % classes, labels)
    return out, noisy


class DigitsConfig(BaseConfig):
    """scikit-learn's bundled 8x8 digits (1,797 images, 10 classes), standardised, one-hot targets."""

    name: Literal["digits"] = "digits"
    """Dataset name."""

    n_train: int = Field(500, ge=10)
    """Training examples (the rest, up to `n_test`, are the test set)."""

    n_test: int = Field(1000, ge=10)
    """Test examples."""

    label_noise: float = Field(0.0, ge=0, lt=1)
    """Probability that a training label is replaced by a random incorrect class."""

    seed: int = 0
    """Split and label-noise seed."""

    def build(self) -> RegressionData:
        X, y = _digits()
        if self.n_train + self.n_test > len(y):
            raise DataError(f"digits has {len(y)} images; n_train + n_test = {self.n_train + self.n_test}")
        order = numpy_rng("digits-split", self.seed).permutation(len(y))
        tr, te = order[: self.n_train], order[self.n_train : self.n_train + self.n_test]
        mean, std = X[tr].mean(0), X[tr].std(0)
        std[std == 0] = 1.0  # constant border pixels
        Xs = (X - mean) / std
        labels, noisy = corrupt_labels(y[tr], 10, self.label_noise, numpy_rng("digits-noise", self.seed))
        return RegressionData(Xs[tr], one_hot(labels, 10), Xs[te], one_hot(y[te], 10), labels, y[te], noisy)


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("the digits dataset needs scikit-learn: pip install scikit-learn") from None
    d = load_digits()
    return d.data.astype(np.float64), d.target.astype(np.int64)


class TeacherConfig(BaseConfig):
    """Synthetic regression (docs/double_descent.md, "Data"): y = tanh(2·wᵀx) + 0.5·sin(x₁) + noise, x ~ N(0, I_d)."""

    name: Literal["teacher"] = "teacher"
    """Dataset name."""

    d: int = Field(20, ge=1)
    """Input dimension."""

    n_train: int = Field(200, ge=2)
    """Training examples."""

    n_test: int = Field(2000, ge=10)
    """Test examples (noise-free targets)."""

    noise_std: float = Field(0.3, ge=0)
    """Std of the Gaussian noise on training targets (0.3: variance 0.09; docs/double_descent.md, "Data")."""

    seed: int = 0
    """Seed of the teacher, the inputs and the noise."""

    def build(self) -> RegressionData:
        rng = numpy_rng("teacher", self.seed)
        w = rng.normal(0, 1 / np.sqrt(self.d), self.d)
        X = rng.normal(size=(self.n_train + self.n_test, self.d))
        y = np.tanh(2 * X @ w) + 0.5 * np.sin(X[:, 0])
        y[: self.n_train] += rng.normal(0, self.noise_std, self.n_train)
        return RegressionData(
            X[: self.n_train], y[: self.n_train, None], X[self.n_train :], y[self.n_train :, None]
        )


RegressionDataConfig = Annotated[DigitsConfig | TeacherConfig, Field(discriminator="name")]
"""A dataset of the double-descent studies, told apart by ``name``."""
