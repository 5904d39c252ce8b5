"""stats.py: differences, their 95% confidence intervals and p-values against scipy and against hand computations."""

import math

import numpy as np
import pytest
from scipy import stats

from mnistlab.stats import holm, mcnemar, mean_std, paired_difference, welch_difference

# Test accuracy (%) of two configurations over the same five seeds: b is a a little lower, seed by seed.
A = {0: 99.05, 1: 98.97, 2: 99.12, 3: 98.90, 4: 99.01}
B = {0: 98.81, 1: 98.80, 2: 98.87, 3: 98.71, 4: 98.79}


def test_a_paired_difference_is_scipys_paired_t_test_and_matches_the_textbook_formula():
    d = paired_difference(A, B)
    diffs = np.array([A[s] - B[s] for s in A])
    reference = stats.ttest_rel(list(A.values()), list(B.values()))
    interval = reference.confidence_interval(0.95)
    assert d.paired and d.n == 5
    assert d.difference == pytest.approx(diffs.mean())
    assert (d.low, d.high, d.p) == pytest.approx((interval.low, interval.high, reference.pvalue))
    # by hand: mean ± t(0.975, n - 1) · s / sqrt(n), and p from the t distribution
    half = stats.t.ppf(0.975, 4) * diffs.std(ddof=1) / math.sqrt(5)
    assert (d.low, d.high) == pytest.approx((diffs.mean() - half, diffs.mean() + half))
    t = diffs.mean() / (diffs.std(ddof=1) / math.sqrt(5))
    assert d.p == pytest.approx(2 * stats.t.sf(abs(t), 4))


def test_pairing_finds_what_a_comparison_of_two_groups_misses():
    """The seeds move both configurations together: paired, the difference is clear; as two groups it is not."""
    shared = {s: 98.0 + s for s in range(5)}  # the seed moves accuracy by a whole point
    better = {s: v + 0.1 + 0.01 * (-1) ** s for s, v in shared.items()}
    assert paired_difference(better, shared).p < 0.001
    assert welch_difference(list(better.values()), list(shared.values())).p > 0.5


def test_a_paired_difference_uses_the_seeds_both_have_and_says_when_it_knows_nothing_more():
    d = paired_difference({**A, 9: 50.0}, B)  # seed 9 has no partner: left out
    assert d.n == 5 and d.difference == pytest.approx(paired_difference(A, B).difference)
    one = paired_difference({0: 99.0}, {0: 98.0})
    assert one.difference == pytest.approx(1.0) and one.low is None and one.p is None and one.n == 1


def test_a_welch_difference_is_scipys_unequal_variance_t_test():
    a, b = [99.1, 99.0, 98.8, 99.3], [98.2, 98.9, 97.6]
    d = welch_difference(a, b)
    reference = stats.ttest_ind(a, b, equal_var=False)
    interval = reference.confidence_interval(0.95)
    assert not d.paired and d.n == 3
    expected = (np.mean(a) - np.mean(b), interval.low, interval.high, reference.pvalue)
    assert (d.difference, d.low, d.high, d.p) == pytest.approx(expected)
    # by hand: Welch-Satterthwaite degrees of freedom
    va, vb = np.var(a, ddof=1) / 4, np.var(b, ddof=1) / 3
    df = (va + vb) ** 2 / (va**2 / 3 + vb**2 / 2)
    assert d.p == pytest.approx(2 * stats.t.sf(abs(np.mean(a) - np.mean(b)) / math.sqrt(va + vb), df))


def test_holm_by_hand():
    # sorted: 0.001 x 4 = 0.004; 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04, raised to the 0.06 before it
    assert holm([0.04, 0.001, 0.03, 0.01]) == pytest.approx([0.06, 0.004, 0.06, 0.03])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([0.01, None, 0.04]) == [pytest.approx(0.02), None, pytest.approx(0.04)]  # no test: not counted


def test_mean_std_is_the_sample_standard_deviation():
    assert mean_std([1.0, 2.0, 3.0]) == {"mean": 2.0, "std": 1.0, "n": 3}
    assert mean_std([5.0]) == {"mean": 5.0, "std": 0.0, "n": 1}


def test_mcnemar_is_the_exact_binomial_test_on_the_images_where_the_models_disagree():
    # 1,000 images: both right on 950, a alone on 30, b alone on 12, both wrong on 8
    a = np.array([1] * 950 + [1] * 30 + [0] * 12 + [0] * 8, dtype=bool)
    b = np.array([1] * 950 + [0] * 30 + [1] * 12 + [0] * 8, dtype=bool)
    m = mcnemar(a, b)
    assert (m.a_only, m.b_only, m.n) == (30, 12, 1000)
    assert m.difference == pytest.approx(a.mean() - b.mean()) == pytest.approx(0.018)
    # by hand: two-sided exact binomial, 2 P(X <= 12) for X ~ Binomial(42, 1/2)
    assert m.p == pytest.approx(2 * sum(math.comb(42, k) for k in range(13)) / 2**42)
    assert m.p == pytest.approx(stats.binomtest(30, 42, 0.5).pvalue)
    half = 1.959964 * math.sqrt((42 / 1000 - 0.018**2) / 1000)
    assert (m.low, m.high) == pytest.approx((0.018 - half, 0.018 + half), rel=1e-5)
    # the images both get right or both get wrong change nothing but n
    assert mcnemar(a[950:], b[950:]).p == pytest.approx(m.p)


def test_mcnemar_of_two_models_that_never_disagree_says_nothing_and_refuses_mismatched_outcomes():
    same = np.array([True, False, True])
    assert mcnemar(same, same).p == 1.0 and mcnemar(same, same).difference == 0.0
    with pytest.raises(ValueError):
        mcnemar(same, same[:2])


def test_image_variance_widens_a_paired_difference_by_the_images_sampling_error():
    plain = paired_difference(A, B)
    assert paired_difference(A, B, image_variance=0.0) == plain
    wider = paired_difference(A, B, image_variance=0.01)
    diffs = np.array([A[s] - B[s] for s in A])
    se = math.sqrt(diffs.var(ddof=1) / 5 + 0.01)
    half = stats.t.ppf(0.975, 4) * se
    assert wider.difference == pytest.approx(plain.difference)
    assert (wider.low, wider.high) == pytest.approx((diffs.mean() - half, diffs.mean() + half))
    assert wider.p == pytest.approx(2 * stats.t.sf(diffs.mean() / se, 4)) and wider.p > plain.p


def test_no_values_give_no_number_and_no_warning(recwarn):
    """As when no run of one configuration reached batch norm's speed threshold: nothing to compare."""
    assert mean_std([]) == {"mean": None, "std": None, "n": 0}
    none = paired_difference({}, {0: 1.0, 1: 2.0})
    assert (none.difference, none.low, none.high, none.p, none.n) == (None, None, None, None, 0)
    assert welch_difference([], [1.0, 2.0]).difference is None
    assert not recwarn.list


def test_a_test_without_a_difference_reads_unknown_in_the_report():
    from mnistlab.claims_report import difference, interval, stat

    t = {**paired_difference({}, {0: 1.0}).to_dict(), "unit": "steps"}
    assert difference(t) == "unknown (no seed has a value for both)"
    assert interval(t) == "unknown (fewer than two seeds)"
    assert stat(mean_std([]), "steps") == "none"
    assert difference({**paired_difference({0: 3.0, 1: 5.0}, {0: 1.0, 1: 2.0}).to_dict(), "unit": "steps"}) == (
        "+2 steps"
    )
