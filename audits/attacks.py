"""Membership-inference attack scores: one number per audited image, higher = more likely a member.

Three tiers, cheapest first:

- `loss_scores`: Yeom et al. 2018, "Privacy Risk in Machine Learning". The score is log p(y|x)
  under the target model (minus the cross-entropy): members tend to have lower loss. Needs no
  reference model, but it cannot tell a hard image from an unseen one.
- `rmia_scores`: Zarifzadeh et al., ICML 2024, "Low-Cost High-Power Membership Inference
  Attacks". Compares p(y|x) with its average over reference models, then ranks that ratio
  against population images known to be non-members.
- `lira_scores`: Carlini et al., S&P 2022, "Membership Inference Attacks From First
  Principles". Fits Gaussians to the logit-scaled confidence phi = log p - log(1 - p) of each
  image under reference models that did (IN) and did not (OUT) train on it.

Conventions: `logits` are float arrays of shape (n, K), `labels` int arrays of shape (n,).
Scores are only compared with each other (ROC), so their scale carries no meaning beyond what
each docstring says.
"""

from __future__ import annotations

import numpy as np
from scipy.special import log_softmax, logsumexp
from scipy.stats import norm

# Below this many reference models per side and image, a per-image variance is too noisy; the
# LiRA paper (Sec. VI-B) then recommends one global variance per side. With a single OUT model
# a per-image variance does not exist at all.
PER_IMAGE_VARIANCE_MIN_MODELS = 64

# Probabilities are floored here before dividing, so that a softmax that underflowed to 0 gives
# a tiny finite ratio rather than 0/0.
_TINY = np.finfo(np.float64).tiny


def _checked_logits(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(f"logits must have shape (n, K) and labels (n,), got {logits.shape} and {labels.shape}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= logits.shape[1]):
        bad = labels[(labels < 0) | (labels >= logits.shape[1])][0]
        raise ValueError(
            f"label {bad} is outside the {logits.shape[1]} classes of the logits (0..{logits.shape[1] - 1})"
        )
    return logits, labels


def true_class_log_prob(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """log p(y|x) = log softmax of the logits at the true label, nats (<= 0; 0 = certain), float64 (n,)."""
    logits, labels = _checked_logits(logits, labels)
    return log_softmax(logits, axis=1)[np.arange(len(labels)), labels]


def logit_margin(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """LiRA's logit-scaled confidence phi = log p_y - log(1 - p_y), float64 (n,); higher = more confident.

    Computed as z_y - logsumexp_{j != y} z_j, which equals the formula above exactly but does not
    lose 1 - p_y to rounding when p_y is close to 1 (memorised images are exactly those)."""
    logits, labels = _checked_logits(logits, labels)
    if logits.shape[1] < 2:
        raise ValueError(f"logit_margin needs at least 2 classes, got logits of shape {logits.shape}")
    rows = np.arange(len(labels))
    others = logits.copy()
    others[rows, labels] = -np.inf
    return logits[rows, labels] - logsumexp(others, axis=1)


def loss_scores(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Yeom et al. 2018 loss attack: score = log p_y = minus the cross-entropy (nats), higher = member."""
    return true_class_log_prob(logits, labels)


def _check_references(target: np.ndarray, refs: np.ndarray, ref_in: np.ndarray, names: tuple[str, str]) -> None:
    if target.ndim != 1 or refs.ndim != 2 or refs.shape[1] != target.shape[0] or ref_in.shape != refs.shape:
        raise ValueError(
            f"{names[0]} must have shape (n,), {names[1]} and ref_in (R, n); got {target.shape}, "
            f"{refs.shape} and {ref_in.shape}"
        )
    if refs.shape[0] == 0:
        raise ValueError(f"at least one reference model is needed, got {names[1]} of shape {refs.shape}")


def rmia_scores(
    target_prob: np.ndarray,
    ref_prob: np.ndarray,
    ref_in: np.ndarray,
    *,
    population: np.ndarray,
    a: float,
    gamma: float,
) -> np.ndarray:
    """RMIA score of each audited image (Zarifzadeh et al. 2024), a share in [0, 1]; higher = member.

    target_prob (n,): p(y|x) under the target model; ref_prob (R, n): the same under R reference
    models; ref_in (R, n) bool: whether image i was in reference model r's training set;
    population: indices into the n images that serve as population samples z (non-members of the
    target).

    Pr(x) is the probability expected without x in training. Offline (ref_in all False) it is
    approximated from OUT models as ((1 + a) mean_r p_r(x) + (1 - a)) / 2; online it is the mean
    over all R models, IN and OUT alike. With ratio(x) = p(x) / Pr(x), the score is the share of
    population images z != x with ratio(x) / ratio(z) > gamma. An image that is itself in the
    population is not compared with itself (leave-one-out), so it is a share of |population| - 1.
    """
    target_prob = np.asarray(target_prob, dtype=np.float64)
    ref_prob = np.asarray(ref_prob, dtype=np.float64)
    ref_in = np.asarray(ref_in, dtype=bool)
    population = np.asarray(population)
    _check_references(target_prob, ref_prob, ref_in, ("target_prob", "ref_prob"))
    n = target_prob.shape[0]
    for name, p in (("target_prob", target_prob), ("ref_prob", ref_prob)):
        bad = ~np.isfinite(p) | (p < 0) | (p > 1)
        if bad.any():
            raise ValueError(f"{name} must hold probabilities in [0, 1], got {p[bad][0]}")
    if population.ndim != 1 or not np.issubdtype(population.dtype, np.integer):
        raise ValueError(
            f"population must be a 1-d integer index array, got shape {population.shape}, {population.dtype}"
        )
    if population.size < 2:
        raise ValueError(f"population needs at least 2 images for a leave-one-out comparison, got {population.size}")
    if population.min() < 0 or population.max() >= n:
        raise ValueError(f"population indices must lie in 0..{n - 1}, got {population.min()}..{population.max()}")
    if len(np.unique(population)) != population.size:
        raise ValueError(
            f"population indices must be distinct, got {population.size - len(np.unique(population))} repeats"
        )
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"a must be in [0, 1], got {a}")
    if not gamma > 0.0:
        raise ValueError(f"gamma must be > 0, got {gamma}")

    mean_ref = ref_prob.mean(axis=0)
    pr_x = mean_ref if ref_in.any() else ((1.0 + a) * mean_ref + (1.0 - a)) / 2.0
    # Log space turns ratio(x) / ratio(z) > gamma into a comparison of differences, which one
    # sort of the population answers for every x at once (n x |population| would be 10^8).
    log_ratio = np.log(np.maximum(target_prob, _TINY)) - np.log(np.maximum(pr_x, _TINY))
    bound = log_ratio - np.log(gamma)  # z counts for x when log_ratio(z) < bound(x)
    counts = np.searchsorted(np.sort(log_ratio[population]), bound, side="left").astype(np.float64)
    sizes = np.full(n, float(population.size))
    # Leave-one-out: x was counted against itself exactly when log_ratio(x) < bound(x), i.e. gamma < 1.
    counts[population] -= log_ratio[population] < bound[population]
    sizes[population] -= 1.0
    return counts / sizes


def _side_stats(ref_phi: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-image mean, standard deviation and count of the phi values selected by mask (R, n)."""
    count = mask.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(mask, ref_phi, 0.0).sum(axis=0) / count
    if count.size and count.min() >= PER_IMAGE_VARIANCE_MIN_MODELS:
        std = np.sqrt(np.where(mask, (ref_phi - mean) ** 2, 0.0).sum(axis=0) / count)
    else:
        # One global spread over every (model, image) value of the side, as the LiRA reference
        # code's fixed-variance mode: it includes the spread between images, so it is defined
        # even with a single model.
        std = np.full(ref_phi.shape[1], ref_phi[mask].std() if mask.any() else np.nan)
    return mean, std, count


def lira_scores(target_phi: np.ndarray, ref_phi: np.ndarray, ref_in: np.ndarray) -> np.ndarray:
    """LiRA score of each audited image (Carlini et al. 2022), float64 (n,); higher = member.

    target_phi (n,): phi = log p - log(1 - p) under the target (`logit_margin`); ref_phi (R, n):
    the same under R reference models; ref_in (R, n) bool: whether image i trained reference r.

    - Online, for an image with IN and OUT references: the log-likelihood ratio
      log N(phi; mu_in, sigma_in) - log N(phi; mu_out, sigma_out), nats.
    - Offline (no image has an IN reference), or an image without IN references: the one-sided
      test against OUT, reported as -log(1 - Phi((phi - mu_out) / sigma_out)), i.e. minus the log
      p-value of "phi is this high for a non-member". It orders images exactly as the paper's
      Phi(...) but does not saturate at 1.0 for strongly memorised images (Phi(9) rounds to 1).
    - An image without OUT references (online with few models): log Phi((phi - mu_in) / sigma_in),
      the log p-value of "phi is this low for a member", <= 0.

    The fallbacks share the likelihood ratio's scale: under its null hypothesis each exceeds t
    (or falls below -t) with probability exactly e^-t, and the ratio with at most e^-t, so an
    image is not favoured or penalised merely for which references it happened to get.

    mu is the per-image mean of the references on that side. sigma is per image only when every
    image has at least PER_IMAGE_VARIANCE_MIN_MODELS references on that side; with fewer (the
    usual 1-4 models) it is one global value per side, over all images and models, as the paper
    recommends for few shadow models.
    """
    target_phi = np.asarray(target_phi, dtype=np.float64)
    ref_phi = np.asarray(ref_phi, dtype=np.float64)
    ref_in = np.asarray(ref_in, dtype=bool)
    _check_references(target_phi, ref_phi, ref_in, ("target_phi", "ref_phi"))
    if not (np.isfinite(target_phi).all() and np.isfinite(ref_phi).all()):
        raise ValueError("target_phi and ref_phi must be finite (use logit_margin, which stays finite)")

    mu_out, sd_out, n_out = _side_stats(ref_phi, ~ref_in)
    mu_in, sd_in, n_in = _side_stats(ref_phi, ref_in)
    for name, sd, used in (("OUT", sd_out, n_out > 0), ("IN", sd_in, n_in > 0)):
        if used.any() and not (sd[used] > 0).all():
            raise ValueError(f"the {name} references' phi values have zero spread; cannot fit a Gaussian")

    scores = np.empty_like(target_phi)
    with np.errstate(invalid="ignore", divide="ignore"):
        z_out = (target_phi - mu_out) / sd_out
        z_in = (target_phi - mu_in) / sd_in
        both = (n_in > 0) & (n_out > 0)
        scores[both] = (norm.logpdf(target_phi, mu_in, sd_in) - norm.logpdf(target_phi, mu_out, sd_out))[both]
        out_only = n_in == 0
        scores[out_only] = -norm.logsf(z_out[out_only])
        in_only = n_out == 0
        scores[in_only] = norm.logcdf(z_in[in_only])
    return scores
