"""The one-run privacy audit's canaries, drawn once, where training decides what it trains on.

`m` training images are set aside as canaries and each is trained on with probability 1/2
(independent, seeded coins). The train stage draws them (`hold_out_canaries`) and hands the
`Canaries` on as data: evaluation scores exactly those images, never drawing them again.
The audit itself (ranking the canaries, the epsilon lower bound) is `auditflow.audits.canaries`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np

from auditflow.core.data import Splits
from auditflow.core.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Canaries:
    """Which training images are canaries and which of them the model trains on."""

    index: np.ndarray  # (m,) int64, sorted indices into the training split
    included: np.ndarray  # (m,) bool, same order: trained on (a fair, seeded coin each)

    @property
    def excluded(self) -> np.ndarray:
        """Training-split indices the model must not see."""
        return self.index[~self.included]

    @classmethod
    def none(cls) -> Canaries:
        """No canaries (the one-run audit is off)."""
        return cls(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool))


def choose_canaries(n_train: int, m: int, seed: int) -> Canaries:
    """`m` distinct training images (seeded) and a fair coin for each; m = 0 gives none."""
    if m < 0 or m > n_train // 2:
        raise ValueError(f"canaries must be between 0 and half the {n_train} training images, got {m}")
    rng = np.random.default_rng([seed, 23])
    index = np.sort(rng.choice(n_train, m, replace=False)) if m else np.zeros(0, dtype=np.int64)
    return Canaries(index.astype(np.int64), rng.random(m) < 0.5)


def kept_for_training(n_train: int, canaries: Canaries) -> np.ndarray:
    """Sorted training-split indices the model trains on: all but the excluded canaries."""
    return np.setdiff1d(np.arange(n_train), canaries.excluded)


def hold_out_canaries(splits: Splits, count: int, seed: int) -> tuple[Splits, Canaries]:
    """Draw `count` canaries from the training split (the only draw of a run) and return the
    splits without the excluded ones, with the canaries; `count` = 0 leaves the splits as they are."""
    n = len(splits.train_y)
    if count > n // 2:
        raise ConfigError(
            f"privacy.canaries={count} needs at least {2 * count} training images, this run has {n}: "
            f"set privacy.canaries to at most {n // 2} (0 = off)"
        )
    chosen = choose_canaries(n, count, seed)
    if not count:
        return splits, chosen
    keep = kept_for_training(n, chosen)
    log.info(
        "one-run audit: %d of %d canaries trained on, %d held out; training on %d of %d images",
        int(chosen.included.sum()),
        count,
        len(chosen.excluded),
        len(keep),
        n,
    )
    return replace(splits, train_x=splits.train_x[keep], train_y=splits.train_y[keep]), chosen
