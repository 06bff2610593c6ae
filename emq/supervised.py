"""The within-bench supervised reference: ridge regression on one-hot (slot, bit) features.

A proxy is judged against what plain fitting achieves on the same data: a linear model with
one coefficient per (slot, bit-width), fitted on the search configurations measured on the
fit pool, its regularisation chosen by leave-one-out cross-validation inside that data
(scikit-learn's RidgeCV). It ranks configurations of *this* bench and cannot say anything
about another network: it is a reference, not a proxy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.linear_model import RidgeCV
from sklearn.preprocessing import StandardScaler

from .errors import EmqError

ALPHAS = tuple(float(a) for a in np.logspace(-3, 4, 29))
NAME = "ridge"
DESCRIPTION = (
    "supervised within-bench reference: ridge on one-hot (slot, bit), fitted on search x fit pool (alpha by "
    "leave-one-out CV)"
)


class OneHotRidge:
    """sklearn-style estimator: fit(configs, target) then predict(configs)."""

    def __init__(self, bits: Sequence[int], alphas: Sequence[float] = ALPHAS) -> None:
        self.bits = tuple(int(b) for b in bits)
        self.alphas = tuple(alphas)

    def features(self, configs: np.ndarray) -> np.ndarray:
        configs = np.asarray(configs, dtype=np.int64)
        return np.concatenate([(configs == b).astype(np.float64) for b in self.bits], axis=1)

    def fit(self, configs: np.ndarray, target: np.ndarray) -> OneHotRidge:
        target = np.asarray(target, dtype=np.float64)
        if configs.shape[0] < 3 or not np.isfinite(target).all():
            raise EmqError(
                f"ridge reference: needs at least 3 configurations with finite targets, got {configs.shape[0]}"
            )
        self.model_ = RidgeCV(alphas=self.alphas).fit(self.features(configs), target)
        self.alpha_ = float(self.model_.alpha_)
        return self

    def predict(self, configs: np.ndarray) -> np.ndarray:
        return self.model_.predict(self.features(configs))

    def table(self) -> np.ndarray:
        """The fitted model as a per-slot table [S, B] (the intercept spread over the slots): its
        prediction of a configuration is the sum of that configuration's cells."""
        coef = self.model_.coef_.reshape(len(self.bits), -1).T  # features are [bit][slot] blocks
        return coef + self.model_.intercept_ / coef.shape[0]


class ScoreRidge:
    """sklearn-style estimator: ridge on standardized proxy scores [N, F] (alpha by leave-one-out CV).

    `weights()` maps the model back onto the raw scores, so a model over separable proxies is
    itself separable: the weighted sum of their tables."""

    def __init__(self, alphas: Sequence[float] = ALPHAS) -> None:
        self.alphas = tuple(alphas)

    def fit(self, scores: np.ndarray, target: np.ndarray) -> ScoreRidge:
        self.scaler_ = StandardScaler().fit(scores)
        self.model_ = RidgeCV(alphas=self.alphas).fit(self.scaler_.transform(scores), target)
        self.alpha_ = float(self.model_.alpha_)
        return self

    def predict(self, scores: np.ndarray) -> np.ndarray:
        return self.model_.predict(self.scaler_.transform(scores))

    def weights(self) -> tuple[np.ndarray, float]:
        """(w, b) with predict(x) = x @ w + b on raw scores."""
        w = self.model_.coef_ / self.scaler_.scale_
        return w, float(self.model_.intercept_ - w @ self.scaler_.mean_)
