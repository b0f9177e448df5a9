"""Predict benchmark scores from a model's raw log-likelihood vector on the corpus.

The predictor applies the same preprocessing as the map (global clip, then double centring
against the training models' column means) and a linear model per benchmark target:

    Q = max(L, clip) - row_mean - col_means
    scores = clip(Q @ coef.T + intercept, 0, 100)

It is saved as one ``.npz`` file (arrays plus the text ids, targets and corpus hash as string
arrays), so it can be loaded without pickle and shipped as an MLflow artifact.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelmap.geometry.placement import Centring
from modelmap.reports.regression import FittedRidge
from modelmap.storage import write_atomic

_FORMAT_VERSION = 1


@dataclass
class ScorePredictor:
    """Linear benchmark-score predictor on double-centred log-likelihoods (see module doc)."""

    text_ids: list[str]  # N corpus text ids, the column order of L
    clip_value: float  # values of L below it are raised to it
    col_means: np.ndarray  # (N,) column means of the clipped, row-centred training matrix
    targets: list[str]  # T benchmark names
    coef: np.ndarray  # (T, N)
    intercept: np.ndarray  # (T,)
    corpus_hash: str

    def __post_init__(self) -> None:
        self.text_ids = [str(t) for t in self.text_ids]
        self.targets = [str(t) for t in self.targets]
        self.clip_value = float(self.clip_value)
        self.col_means = np.asarray(self.col_means, dtype=np.float64).reshape(-1)
        self.coef = np.atleast_2d(np.asarray(self.coef, dtype=np.float64))
        self.intercept = np.asarray(self.intercept, dtype=np.float64).reshape(-1)
        n, t = len(self.text_ids), len(self.targets)
        if len(set(self.text_ids)) != n:
            raise ValueError("text_ids must be unique")
        if self.col_means.shape != (n,):
            raise ValueError(f"col_means has shape {self.col_means.shape}, expected ({n},)")
        if self.coef.shape != (t, n):
            raise ValueError(f"coef has shape {self.coef.shape}, expected ({t}, {n})")
        if self.intercept.shape != (t,):
            raise ValueError(f"intercept has shape {self.intercept.shape}, expected ({t},)")

    @property
    def n_texts(self) -> int:
        return len(self.text_ids)

    @classmethod
    def from_fit(
        cls, fitted: FittedRidge, centring: Centring, text_ids: list[str], corpus_hash: str
    ) -> ScorePredictor:
        """The ridge ``fitted`` on Q behind the map's own fitted ``centring`` (clip value,
        column means): a new model's row is centred exactly as the map and the placement
        centre it."""
        return cls(
            text_ids=list(text_ids),
            clip_value=centring.clip_value,
            col_means=centring.col_means,
            targets=fitted.targets,
            coef=fitted.coef,
            intercept=fitted.intercept,
            corpus_hash=corpus_hash,
        )

    @classmethod
    def from_matrix(
        cls,
        L_raw: np.ndarray,
        clip_value: float,
        text_ids: list[str],
        targets: list[str],
        coef: np.ndarray,
        intercept: np.ndarray,
        corpus_hash: str,
    ) -> ScorePredictor:
        """Build a predictor whose col_means come from the raw training matrix ``L_raw``."""
        if L_raw.ndim == 1:
            L_raw = L_raw[None, :]
        if L_raw.shape[1] != len(text_ids):
            raise ValueError(f"L_raw has {L_raw.shape[1]} columns but {len(text_ids)} text ids")
        col_means = Centring().fit(L_raw, clip_value=clip_value).col_means
        return cls(
            list(text_ids), clip_value, col_means, list(targets), coef, intercept, corpus_hash
        )

    def _check(self, L: np.ndarray) -> np.ndarray:
        L = np.asarray(L, dtype=np.float64)
        if L.ndim == 1:
            L = L[None, :]
        if L.ndim != 2 or L.shape[1] != self.n_texts:
            raise ValueError(
                f"expected log-likelihoods of shape (m, {self.n_texts}) (one column per corpus "
                f"text), got shape {L.shape}"
            )
        return L

    @property
    def centring(self) -> Centring:
        """The map's fitted centring (clip value and column means) this predictor applies."""
        return Centring(clip_value=self.clip_value, col_means=self.col_means)

    def centre(self, L: np.ndarray) -> np.ndarray:
        """Clip, subtract each row's mean, then subtract the training column means."""
        return self.centring.transform(self._check(L))

    def predict(self, L: np.ndarray) -> np.ndarray:
        """(m, T) predicted scores in [0, 100] for raw log-likelihood rows ``L`` (m, N)."""
        return np.clip(self.centre(L) @ self.coef.T + self.intercept, 0.0, 100.0)

    # persistence -------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write one ``.npz`` atomically (temporary name, then rename)."""
        arrays = {
            "format_version": np.array(_FORMAT_VERSION),
            "text_ids": np.array(self.text_ids, dtype=np.str_),
            "targets": np.array(self.targets, dtype=np.str_),
            "corpus_hash": np.array(self.corpus_hash, dtype=np.str_),
            "clip_value": np.array(self.clip_value),
            "col_means": self.col_means,
            "coef": self.coef,
            "intercept": self.intercept,
        }

        def _write(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # a file object: numpy adds no ".npz" suffix
                np.savez(f, **arrays)

        return write_atomic(Path(path), _write)

    @classmethod
    def load(cls, path: str | Path) -> ScorePredictor:
        with np.load(Path(path), allow_pickle=False) as z:
            version = int(z["format_version"])
            if version != _FORMAT_VERSION:
                raise ValueError(f"{path}: unsupported predictor format version {version}")
            return cls(
                text_ids=z["text_ids"].tolist(),
                clip_value=float(z["clip_value"]),
                col_means=z["col_means"],
                targets=z["targets"].tolist(),
                coef=z["coef"],
                intercept=z["intercept"],
                corpus_hash=str(z["corpus_hash"]),
            )
