"""Tests for auditgame.metrics: every expected value here is worked out by hand in a comment."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from auditgame import metrics
from auditgame.metrics import (
    DEFAULT_THRESHOLD,
    attack_success_rate,
    auroc,
    auroc_ci,
    binomial_interval,
    brier,
    cross_entropy,
    cross_entropy_ci,
    false_positive_rate,
    mask_iou,
    roc_curve,
    target_accuracy,
    tpr_at_fpr,
)

# clean scores 0.1, 0.5; backdoored 0.5, 0.9. Pairs (pos, neg):
# (0.5, 0.1) -> 1, (0.5, 0.5) -> 1/2, (0.9, 0.1) -> 1, (0.9, 0.5) -> 1; U = 3.5 of 4 pairs.
TIE_LABELS = [0, 0, 1, 1]
TIE_SCORES = [0.1, 0.5, 0.5, 0.9]


def _separable(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n clean ~ N(0, 1) and n backdoored ~ N(1, 1): overlapping, AUROC around 0.76."""
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1], n)
    scores = np.concatenate([rng.normal(0.0, 1.0, n), rng.normal(1.0, 1.0, n)])
    return labels, scores


# ---------------------------------------------------------------- auroc


def test_default_threshold() -> None:
    assert DEFAULT_THRESHOLD == 0.5


def test_auroc_hand_example_with_tie() -> None:
    assert auroc(TIE_LABELS, TIE_SCORES) == pytest.approx(3.5 / 4)


def test_auroc_perfect_reversed_and_all_tied() -> None:
    assert auroc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert auroc([0, 0, 1, 1], [0.8, 0.9, 0.1, 0.2]) == 0.0
    # every pair tied -> each counts 1/2
    assert auroc([0, 1, 0, 1], [0.3, 0.3, 0.3, 0.3]) == 0.5


def test_auroc_accepts_numpy_and_order_invariant() -> None:
    labels, scores = _separable(30, seed=1)
    perm = np.random.default_rng(2).permutation(labels.size)
    assert auroc(labels, scores) == pytest.approx(auroc(labels[perm], scores[perm]))


def test_auroc_equals_trapezoid_area_under_roc_curve() -> None:
    # with scores rounded to create many ties, U/(n_pos n_neg) must still equal the ROC area
    labels, scores = _separable(50, seed=3)
    scores = np.round(scores, 1)
    fpr, tpr = roc_curve(labels, scores)
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))
    assert auroc(labels, scores) == pytest.approx(area)


@pytest.mark.parametrize(
    ("labels", "scores", "match"),
    [
        ([0, 0, 0], [0.1, 0.2, 0.3], "backdoored"),
        ([1, 1], [0.1, 0.2], "clean"),
        ([], [], "backdoored"),
        ([0, 1], [0.1, 0.2, 0.3], "same length"),
        ([0, 1], [0.1, float("nan")], "NaN"),
        ([0, 2], [0.1, 0.2], "labels must be 0"),
        ([[0, 1]], [[0.1, 0.2]], "1-D"),
    ],
)
def test_auroc_raises(labels: list, scores: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        auroc(labels, scores)


# ---------------------------------------------------------------- auroc_ci


def test_auroc_ci_contains_estimate_and_shrinks_with_more_data() -> None:
    small_l, small_s = _separable(15, seed=4)
    big_l, big_s = _separable(300, seed=4)
    lo_s, hi_s = auroc_ci(small_l, small_s, n_boot=500)
    lo_b, hi_b = auroc_ci(big_l, big_s, n_boot=500)
    assert lo_s <= auroc(small_l, small_s) <= hi_s
    assert lo_b <= auroc(big_l, big_s) <= hi_b
    assert 0.0 <= lo_s < hi_s <= 1.0
    assert hi_b - lo_b < (hi_s - lo_s) / 2  # 20x the data: width should fall by ~sqrt(20)


def test_auroc_ci_deterministic_per_seed() -> None:
    labels, scores = _separable(20, seed=5)
    a = auroc_ci(labels, scores, n_boot=300, seed=7)
    assert a == auroc_ci(labels, scores, n_boot=300, seed=7)
    assert a != auroc_ci(labels, scores, n_boot=300, seed=8)


def test_auroc_ci_perfect_separation_is_degenerate() -> None:
    # every stratified resample is still perfectly separated
    assert auroc_ci([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], n_boot=100) == (1.0, 1.0)


def test_auroc_ci_raises() -> None:
    with pytest.raises(ValueError, match="n_boot"):
        auroc_ci(TIE_LABELS, TIE_SCORES, n_boot=0)
    with pytest.raises(ValueError, match="level"):
        auroc_ci(TIE_LABELS, TIE_SCORES, level=1.0)
    with pytest.raises(ValueError, match="clean"):
        auroc_ci([1, 1], [0.2, 0.3])


# ---------------------------------------------------------------- roc_curve / tpr_at_fpr


def test_roc_curve_hand_example() -> None:
    # thresholds 0.9, 0.5, 0.1: (fp, tp) = (0/2, 1/2), (1/2, 2/2), (2/2, 2/2), after (0, 0)
    fpr, tpr = roc_curve(TIE_LABELS, TIE_SCORES)
    np.testing.assert_allclose(fpr, [0.0, 0.0, 0.5, 1.0])
    np.testing.assert_allclose(tpr, [0.0, 0.5, 1.0, 1.0])
    assert fpr.dtype == np.float64 and tpr.dtype == np.float64


def test_roc_curve_shape_properties() -> None:
    labels, scores = _separable(40, seed=6)
    fpr, tpr = roc_curve(labels, scores)
    assert (fpr[0], tpr[0]) == (0.0, 0.0)
    assert (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert fpr.size == np.unique(scores).size + 1
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)


def test_tpr_at_fpr_hand_example() -> None:
    # clean 0.1 0.2 0.3 0.4 0.8 (5), backdoored 0.5 0.6 0.7 0.9 (4).
    # t=0.9: fpr 0,   tpr 1/4.   t=0.8: fpr 1/5, tpr 1/4.   t=0.5: fpr 1/5, tpr 4/4.
    # t=0.4: fpr 2/5, tpr 1.
    labels = [0, 0, 0, 0, 0, 1, 1, 1, 1]
    scores = [0.1, 0.2, 0.3, 0.4, 0.8, 0.5, 0.6, 0.7, 0.9]
    assert tpr_at_fpr(labels, scores, fpr=0.0) == 0.25
    assert tpr_at_fpr(labels, scores, fpr=0.1) == 0.25
    assert tpr_at_fpr(labels, scores, fpr=0.2) == 1.0  # budget met exactly counts
    assert tpr_at_fpr(labels, scores, fpr=1.0) == 1.0


def test_tpr_at_fpr_boundary_rounding_and_nothing_admissible() -> None:
    # 20 clean, one of them above every backdoored score: fpr 1/20 must fit a 0.05 budget
    labels = [0] * 20 + [1] * 2
    scores = [0.0] * 19 + [1.0] + [0.5, 0.5]
    assert tpr_at_fpr(labels, scores, fpr=0.05) == 1.0
    # top score is clean: no real threshold has fpr 0, only "flag nothing"
    assert tpr_at_fpr(labels, scores, fpr=0.0) == 0.0


def test_tpr_at_fpr_raises() -> None:
    with pytest.raises(ValueError, match="fpr"):
        tpr_at_fpr(TIE_LABELS, TIE_SCORES, fpr=1.5)
    with pytest.raises(ValueError, match="clean"):
        tpr_at_fpr([1, 1], [0.1, 0.2])


# ---------------------------------------------------------------- cross-entropy, brier


def test_cross_entropy_half_is_ln2() -> None:
    assert cross_entropy([0, 1, 1, 0, 1], [0.5] * 5) == pytest.approx(math.log(2))


def test_cross_entropy_hand_example() -> None:
    # -(ln 0.8 + ln(1 - 0.4)) / 2
    expected = -(math.log(0.8) + math.log(0.6)) / 2
    assert cross_entropy([1, 0], [0.8, 0.4]) == pytest.approx(expected)


def test_cross_entropy_clips_confident_mistakes() -> None:
    assert cross_entropy([1], [0.0]) == pytest.approx(-math.log(1e-12))
    assert cross_entropy([0], [1.0], eps=1e-3) == pytest.approx(-math.log(1e-3))
    assert cross_entropy([1, 0], [1.0, 0.0]) == pytest.approx(0.0, abs=1e-11)


def test_cross_entropy_ci_hand_example() -> None:
    # per-organism CE = [~0, 2] (p = 1 and p = e^-2 for positives); population std = 1
    half = cross_entropy_ci([1, 1], [1.0, math.exp(-2.0)])
    assert half == pytest.approx(1.96 * 1.0 / math.sqrt(2), abs=1e-9)
    # identical per-organism CE -> zero spread
    assert cross_entropy_ci([0, 1, 0], [0.5, 0.5, 0.5]) == pytest.approx(0.0)


def test_brier_hand_example() -> None:
    # (0.2^2 + 0.3^2 + 0^2) / 3
    assert brier([0, 1, 1], [0.2, 0.7, 1.0]) == pytest.approx(0.13 / 3)
    assert brier([0, 1], [0.5, 0.5]) == pytest.approx(0.25)


@pytest.mark.parametrize("fn", [cross_entropy, cross_entropy_ci, brier])
def test_probability_metrics_raise(fn: Callable[..., float]) -> None:
    with pytest.raises(ValueError, match="at least one"):
        fn([], [])
    with pytest.raises(ValueError, match="same length"):
        fn([0, 1], [0.5])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fn([0, 1], [0.5, 1.2])
    with pytest.raises(ValueError, match="NaN"):
        fn([0, 1], [0.5, float("nan")])
    with pytest.raises(ValueError, match="labels must be 0"):
        fn([0, -1], [0.5, 0.5])


def test_cross_entropy_bad_eps() -> None:
    with pytest.raises(ValueError, match="eps"):
        cross_entropy([0], [0.5], eps=0.0)
    with pytest.raises(ValueError, match="eps"):
        cross_entropy_ci([0], [0.5], eps=0.5)


# ---------------------------------------------------------------- false_positive_rate


def test_false_positive_rate_hand_example() -> None:
    # clean probs 0.5 (flagged: >= is inclusive), 0.49, 0.9 (flagged), 0.1 -> 2/4;
    # the backdoored organism's 0.0 is ignored
    labels = [0, 0, 0, 0, 1]
    probs = [0.5, 0.49, 0.9, 0.1, 0.0]
    assert false_positive_rate(labels, probs) == 0.5
    assert false_positive_rate(labels, probs, threshold=0.95) == 0.0
    assert false_positive_rate(labels, probs, threshold=0.0) == 1.0


def test_false_positive_rate_raises_without_clean() -> None:
    with pytest.raises(ValueError, match="clean"):
        false_positive_rate([1, 1], [0.2, 0.9])


# ---------------------------------------------------------------- target_accuracy


def test_target_accuracy_hand_example() -> None:
    # right, None (wrong), right, wrong -> 2/4
    assert target_accuracy([3, None, 2, 1], [3, 1, 2, 0]) == 0.5
    numpy_preds: list[Any] = [np.int64(4)]  # predictions often arrive as numpy integers
    assert target_accuracy(numpy_preds, [4]) == 1.0
    assert target_accuracy([None, None], [0, 0]) == 0.0


def test_target_accuracy_raises() -> None:
    with pytest.raises(ValueError, match="at least one"):
        target_accuracy([], [])
    with pytest.raises(ValueError, match="same length"):
        target_accuracy([1, 2], [1])


# ---------------------------------------------------------------- mask_iou


def test_mask_iou_shifted_patch() -> None:
    # true: 2x2 patch at rows 0-1, cols 0-1. estimate: same patch shifted right by one column.
    # intersection = column 1 of rows 0-1 = 2 pixels; union = 4 + 4 - 2 = 6.
    true = np.zeros((4, 4))
    true[0:2, 0:2] = 1.0
    est = np.zeros((4, 4))
    est[0:2, 1:3] = 0.9
    assert mask_iou(true, est) == pytest.approx(2 / 6)
    assert mask_iou(true, true) == 1.0


def test_mask_iou_thresholds() -> None:
    true = np.zeros((3, 3))
    true[1, 1] = 0.2  # any positive value belongs to the true support
    est = np.zeros((3, 3))
    est[1, 1] = 0.5  # not > 0.5: outside the estimate's support at the default threshold
    assert mask_iou(true, est) == 0.0
    assert mask_iou(true, est, threshold=0.4) == 1.0


def test_mask_iou_empty_supports() -> None:
    empty = np.zeros((2, 2))
    full = np.ones((2, 2))
    assert mask_iou(empty, empty) == 1.0
    assert mask_iou(empty, full) == 0.0
    assert mask_iou(full, empty) == 0.0


def test_mask_iou_raises() -> None:
    with pytest.raises(ValueError, match="same shape"):
        mask_iou(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="NaN"):
        mask_iou(np.full((2, 2), np.nan), np.zeros((2, 2)))


# ---------------------------------------------------------------- attack_success_rate

TARGET = 2
N_CLASSES = 4


class PixelBackdoorNet(nn.Module):
    """Predicts TARGET when pixel [0, 0] of channel 0 is exactly 1, class 0 otherwise."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(N_CLASSES))
        self.calls: list[tuple[bool, bool, int]] = []  # (training, grad enabled, batch size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((self.training, torch.is_grad_enabled(), x.shape[0]))
        logits = torch.zeros(x.shape[0], N_CLASSES)
        logits[:, 0] = 1.0
        logits[x[:, 0, 0, 0] == 1.0, TARGET] = 2.0
        return logits + self.bias


def stamp_if_marked(x: torch.Tensor) -> torch.Tensor:
    """A trigger that only 'takes' on inputs whose pixel [1, 1] is marked (> 0.5)."""
    out = x.clone()
    out[:, 0, 0, 0] = (x[:, 0, 1, 1] > 0.5).float()
    return out


def _asr_data() -> tuple[torch.Tensor, torch.Tensor]:
    # labels:   idx 0 1 2 3 4 5 6 7 8 9
    #           y   0 1 2 2 0 1 3 0 1 2      -> non-target idx: 0 1 4 5 6 7 8 (7 inputs)
    # marked:       0, 2, 4, 6, 9            -> marked and non-target: 0 4 6 -> ASR = 3/7.
    # Counting target-labelled inputs (2 and 9 are marked) would wrongly give 5/10.
    y = torch.tensor([0, 1, 2, 2, 0, 1, 3, 0, 1, 2])
    x = torch.zeros(10, 1, 3, 3)
    x[[0, 2, 4, 6, 9], 0, 1, 1] = 1.0
    return x, y


@pytest.mark.parametrize("batch_size", [512, 3, 1])
def test_attack_success_rate_exact_fraction(batch_size: int) -> None:
    x, y = _asr_data()
    model = PixelBackdoorNet()
    asr = attack_success_rate(model, stamp_if_marked, x, y, TARGET, batch_size=batch_size)
    assert asr == pytest.approx(3 / 7)
    # only the 7 non-target inputs were evaluated, in eval mode with gradients off
    assert sum(n for _, _, n in model.calls) == 7
    assert all(not training and not grad for training, grad, _ in model.calls)
    assert max(n for _, _, n in model.calls) <= batch_size


def test_attack_success_rate_without_trigger_and_restores_mode() -> None:
    x, y = _asr_data()
    model = PixelBackdoorNet()
    model.train()
    assert attack_success_rate(model, lambda t: t, x, y, TARGET) == 0.0
    assert model.training  # the caller's mode is put back
    assert attack_success_rate(model, lambda t: torch.ones_like(t), x, y, TARGET) == 1.0


def test_attack_success_rate_raises() -> None:
    x, y = _asr_data()
    model = PixelBackdoorNet()
    with pytest.raises(ValueError, match="not the target"):
        attack_success_rate(model, stamp_if_marked, x[[2, 3]], y[[2, 3]], TARGET)
    with pytest.raises(ValueError, match="shapes"):
        attack_success_rate(model, stamp_if_marked, x[:5], y, TARGET)
    with pytest.raises(ValueError, match="batch_size"):
        attack_success_rate(model, stamp_if_marked, x, y, TARGET, batch_size=0)

    class FlatOut(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.zeros(x.shape[0])

    with pytest.raises(ValueError, match="logits"):
        attack_success_rate(FlatOut(), stamp_if_marked, x, y, TARGET)


# ---------------------------------------------------------------- binomial_interval

Z95 = 1.959963984540054  # standard-normal 0.975 quantile


def test_binomial_interval_zero_successes_closed_form() -> None:
    # successes = 0: Wilson upper bound is z^2 / (n + z^2) = 3.841459 / 13.841459 = 0.27753
    low, high = binomial_interval(0, 10)
    assert low == 0.0
    assert high == pytest.approx(Z95**2 / (10 + Z95**2))
    assert high == pytest.approx(0.27753, abs=1e-5)


def test_binomial_interval_hand_example() -> None:
    # 1/10: z^2/n = 0.384146; center = (0.1 + 0.192073) / 1.384146 = 0.211013;
    # half = 1.959964 / 1.384146 * sqrt(0.009 + 0.0096036) = 1.416010 * 0.136395 = 0.193136
    low, high = binomial_interval(1, 10)
    assert low == pytest.approx(0.017877, abs=1e-5)
    assert high == pytest.approx(0.404150, abs=1e-5)


def test_binomial_interval_symmetry_and_level() -> None:
    lo, hi = binomial_interval(5, 10)
    assert lo + hi == pytest.approx(1.0)
    lo0, hi0 = binomial_interval(0, 10)
    lo10, hi10 = binomial_interval(10, 10)
    assert (lo10, hi10) == pytest.approx((1.0 - hi0, 1.0 - lo0))
    assert hi10 == 1.0
    lo99, hi99 = binomial_interval(5, 10, level=0.99)
    assert lo99 < lo < 0.5 < hi < hi99


def test_binomial_interval_raises() -> None:
    with pytest.raises(ValueError, match="n must be"):
        binomial_interval(0, 0)
    with pytest.raises(ValueError, match="successes"):
        binomial_interval(11, 10)
    with pytest.raises(ValueError, match="successes"):
        binomial_interval(-1, 10)
    with pytest.raises(ValueError, match="level"):
        binomial_interval(1, 10, level=0.0)


def test_public_names() -> None:
    assert set(metrics.__all__) == {
        "DEFAULT_THRESHOLD",
        "attack_success_rate",
        "auroc",
        "auroc_ci",
        "binomial_interval",
        "brier",
        "certificate_gap",
        "cross_entropy",
        "cross_entropy_ci",
        "direction_cosine",
        "false_positive_rate",
        "flip_rate",
        "mapped_attack_success_rate",
        "mask_iou",
        "reasr",
        "roc_curve",
        "source_success_rates",
        "sentence_bleu",
        "target_accuracy",
        "tdc_score",
        "tpr_at_fpr",
        "trigger_recall",
    }
