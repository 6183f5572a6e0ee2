"""Hand-computed checks of the paper's metrics on tiny inputs."""

import math

import numpy as np
import pytest
import torch

from aae.metrics import (
    PARZEN_SIGMAS,
    ari,
    category_log_odds,
    classification_error,
    cluster_error,
    cluster_error_majority,
    clustering_report,
    components_fit,
    gaussian_covariance_parts,
    gaussian_fit,
    majority_cluster_labels,
    nmi,
    paper_cluster_error,
    paper_cluster_labels,
    parzen_log_likelihood,
    per_class_error,
    reconstruction_errors,
    select_parzen_sigma,
)

# Six training points, three clusters. Row n is q(y | x_n); argmax assigns clusters [0, 0, 0, 1, 2, 2].
# Cluster 0 holds labels {1, 0, 0}, but its most confident member is x_0 (q = 0.9), whose label is 1.
TRAIN_PROBS = np.array(
    [
        [0.9, 0.05, 0.05],  # label 1  <- argmax of column 0
        [0.6, 0.3, 0.1],  # label 0
        [0.7, 0.2, 0.1],  # label 0
        [0.1, 0.8, 0.1],  # label 1  <- argmax of column 1
        [0.1, 0.1, 0.8],  # label 2  <- argmax of column 2
        [0.2, 0.1, 0.7],  # label 2
    ]
)
TRAIN_LABELS = np.array([1, 0, 0, 1, 2, 2])


def test_paper_rule_labels_each_cluster_by_its_most_confident_training_example():
    # Paper: columns' argmax rows are x_0, x_3, x_4 -> labels [1, 1, 2].
    # Majority: cluster 0 votes {1, 0, 0} -> 0; cluster 1 {1} -> 1; cluster 2 {2, 2} -> 2.
    assert paper_cluster_labels(TRAIN_PROBS, TRAIN_LABELS).tolist() == [1, 1, 2]
    assert majority_cluster_labels(TRAIN_PROBS.argmax(1), TRAIN_LABELS, 3).tolist() == [0, 1, 2]


def test_log_odds_break_the_ties_of_saturated_probabilities():
    # Cluster 0's logit leads by 30 for x_0 (label 3) and by 60 for x_1 (label 5): in float32 both softmax
    # probabilities are exactly 1.0, so argmax over q picks x_0, the first of the tie; the log-odds keep the
    # order and give x_1's label, the paper's rule in exact arithmetic.
    logits = torch.tensor([[30.0, 0.0, 0.0], [60.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0]])
    labels = np.array([3, 5, 1, 2])
    probs = logits.softmax(1)
    assert probs[0, 0] == probs[1, 0] == 1.0
    assert paper_cluster_labels(probs, labels).tolist()[0] == 3
    log_odds = category_log_odds(logits)
    assert paper_cluster_labels(log_odds, labels).tolist() == [5, 1, 2]
    # Where float32 is exact it is log(q / (1 - q)), and its argmax over categories is q's.
    moderate = torch.tensor([[0.5, -1.0, 2.0], [1.0, 1.5, -0.5]])
    q = moderate.double().softmax(1)
    assert torch.allclose(category_log_odds(moderate).double(), (q / (1 - q)).log(), atol=1e-5)
    assert category_log_odds(moderate).argmax(1).tolist() == q.argmax(1).tolist()


def test_paper_and_majority_cluster_errors_differ_as_computed_by_hand():
    # Evaluated on the same six points. Paper predicts [1, 1, 1, 1, 2, 2] vs [1, 0, 0, 1, 2, 2]:
    # x_1 and x_2 wrong -> 2/6 = 33.33%. Majority predicts [0, 0, 0, 1, 2, 2]: x_0 wrong -> 1/6 = 16.67%.
    assert paper_cluster_error(TRAIN_PROBS, TRAIN_LABELS, TRAIN_PROBS, TRAIN_LABELS) == pytest.approx(200 / 6)
    assert cluster_error_majority(TRAIN_PROBS, TRAIN_LABELS, TRAIN_PROBS, TRAIN_LABELS) == pytest.approx(
        100 / 6
    )
    assert cluster_error(TRAIN_PROBS, [1, 1, 2], TRAIN_LABELS) == pytest.approx(200 / 6)


def test_clustering_report_scores_the_test_set():
    # Test assignments [0, 1, 2, 0], labels [0, 1, 2, 0]. Paper labels [1, 1, 2] predict [1, 1, 2, 1]:
    # 2/4 wrong = 50%. Majority labels [0, 1, 2] predict perfectly: 0%. Clusters match labels exactly,
    # so NMI = ARI = 1.
    test_probs = np.eye(3)[[0, 1, 2, 0]]
    report = clustering_report(TRAIN_PROBS, TRAIN_LABELS, test_probs, np.array([0, 1, 2, 0]))
    assert report == pytest.approx(
        {"cluster_error": 50.0, "cluster_error_majority": 0.0, "nmi": 1.0, "ari": 1.0}
    )


def test_majority_rule_gives_an_empty_cluster_the_most_common_training_label():
    assert majority_cluster_labels([0, 0, 1], [2, 2, 1], n_clusters=3).tolist() == [2, 1, 2]


def test_classification_error_accepts_probabilities_or_labels():
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.2, 0.7], [0.3, 0.6, 0.1], [0.2, 0.5, 0.3]])
    labels = np.array([0, 2, 2, 1])  # argmax [0, 2, 1, 1]: only x_2 is wrong -> 25%
    assert classification_error(probs, labels) == pytest.approx(25.0)
    assert classification_error(np.array([0, 2, 1, 1]), labels) == pytest.approx(25.0)
    assert classification_error(torch.tensor(probs), torch.tensor(labels)) == pytest.approx(25.0)


def test_per_class_error_by_hand():
    pred = [0, 0, 1, 1, 2, 2, 2]
    labels = [0, 1, 1, 1, 2, 2, 0]
    # class 0: x_0 -> 0, x_6 -> 2: 1/2. class 1: x_1..x_3 -> 0, 1, 1: 1/3. class 2: both right.
    # class 3 has no examples: NaN.
    errors = per_class_error(np.array(pred), np.array(labels), n_classes=4)
    assert errors[:3] == pytest.approx([50.0, 100 / 3, 0.0])
    assert math.isnan(errors[3])


def test_nmi_and_ari_are_one_for_a_perfect_clustering_with_permuted_ids():
    labels = np.array([0, 0, 1, 1, 2, 2])
    clusters = np.array([2, 2, 0, 0, 1, 1])
    assert nmi(clusters, labels) == pytest.approx(1.0)
    assert ari(clusters, labels) == pytest.approx(1.0)


def test_nmi_and_ari_on_a_split_class_by_hand():
    # labels [0, 0, 1, 1], clusters [0, 0, 1, 2]: class 1 is split in two.
    # NMI: H(Y) = ln 2, H(C) = 1.5 ln 2, I = H(Y) (clusters determine labels); ln 2 / (2.5 ln 2 / 2) = 0.8.
    # ARI: sum C(n_ij, 2) = 1, rows 1 + 1 = 2, cols 1, C(4, 2) = 6; expected 2/6, max 1.5;
    #      (1 - 1/3) / (1.5 - 1/3) = 4/7.
    labels, clusters = np.array([0, 0, 1, 1]), np.array([0, 0, 1, 2])
    assert nmi(clusters, labels) == pytest.approx(0.8)
    assert ari(clusters, labels) == pytest.approx(4 / 7)


def _naive_parzen(samples, data, sigma):
    """Mean over x of log((1/K) sum_k N(x; s_k, sigma^2 I)), written out term by term."""
    total = 0.0
    for x in data:
        density = 0.0
        for s in samples:
            sq = sum((xi - si) ** 2 for xi, si in zip(x, s, strict=True))
            density += math.exp(-sq / (2 * sigma**2)) / (2 * math.pi * sigma**2) ** (len(x) / 2)
        total += math.log(density / len(samples))
    return total / len(data)


def test_parzen_log_likelihood_matches_a_naive_double_loop():
    rng = np.random.default_rng(0)
    samples, data = rng.normal(size=(5, 2)), rng.normal(size=(4, 2))
    for sigma in (0.3, 1.0):
        expected = _naive_parzen(samples.tolist(), data.tolist(), sigma)
        assert parzen_log_likelihood(samples, data, sigma) == pytest.approx(expected, rel=1e-10)


def test_parzen_batching_gives_the_same_value_as_one_batch():
    rng = np.random.default_rng(1)
    samples, data = rng.random(size=(7, 6)), rng.random(size=(5, 6))
    whole = parzen_log_likelihood(samples, data, sigma=0.2, batch_size=100)
    assert parzen_log_likelihood(samples, data, sigma=0.2, batch_size=3) == pytest.approx(whole, rel=1e-12)
    assert parzen_log_likelihood(
        torch.tensor(samples), torch.tensor(data), 0.2, batch_size=1
    ) == pytest.approx(whole, rel=1e-12)


def test_parzen_stays_finite_when_every_kernel_underflows():
    # exp(-100^2 / (2 * 0.1^2)) is 0 in float64; logsumexp keeps the value: -5e5 - ln(2 pi 0.01).
    ll = parzen_log_likelihood(np.zeros((1, 1)), np.full((1, 1), 100.0), sigma=0.1)
    assert ll == pytest.approx(-(100.0**2) / (2 * 0.01) - 0.5 * math.log(2 * math.pi * 0.01))


def test_select_parzen_sigma_picks_the_grid_width_that_maximises_validation_likelihood():
    # One sample at 0, validation at +-0.5: LL(sigma) = -0.25 / (2 sigma^2) - ln sigma - ln(2 pi) / 2,
    # maximised at sigma = 0.5, where LL = -0.5 - ln 0.5 - ln(2 pi) / 2.
    sigma, ll = select_parzen_sigma(
        np.zeros((1, 1)), np.array([[0.5], [-0.5]]), sigmas=[0.1, 0.25, 0.5, 1.0, 2.0]
    )
    assert sigma == 0.5
    assert ll == pytest.approx(-0.5 - math.log(0.5) - 0.5 * math.log(2 * math.pi))


def test_select_parzen_sigma_default_grid_is_logspace_tenth_to_one():
    assert np.allclose(PARZEN_SIGMAS, np.logspace(-1, 0, 10))
    rng = np.random.default_rng(2)
    samples, validation = rng.normal(size=(6, 3)), rng.normal(size=(4, 3))
    sigma, ll = select_parzen_sigma(samples, validation)
    assert ll == pytest.approx(max(parzen_log_likelihood(samples, validation, s) for s in PARZEN_SIGMAS))
    assert ll == pytest.approx(parzen_log_likelihood(samples, validation, sigma))


def test_reconstruction_errors_by_hand():
    x = np.array([[1.0, 0.0], [1.0, 1.0]])
    x_hat = np.array([[0.5, 0.25], [0.5, 1.0]])
    # MSE: (0.25 + 0.0625 + 0.25 + 0) / 4 = 0.140625.
    # BCE: x_0 -> -ln 0.5 - ln 0.75; x_1 -> -ln 0.5 - ln(1 - eps) ~ ln 2; mean = (2 ln 2 + ln(4/3)) / 2.
    errors = reconstruction_errors(torch.tensor(x), torch.tensor(x_hat))
    assert errors["recon_mse"] == pytest.approx(0.140625)
    assert errors["recon_bce"] == pytest.approx((2 * math.log(2) + math.log(4 / 3)) / 2, rel=1e-6)


def test_reconstruction_bce_is_finite_when_the_decoder_saturates_wrongly():
    errors = reconstruction_errors(np.ones((2, 1, 2, 2)), np.zeros((2, 1, 2, 2)))
    assert math.isfinite(errors["recon_bce"])
    assert errors["recon_bce"] == pytest.approx(-4 * math.log(1e-7), rel=1e-6)
    assert errors["recon_mse"] == pytest.approx(1.0)


def test_gaussian_fit_is_near_zero_for_prior_draws_and_names_a_wrong_scale_or_offset():
    z = 5 * torch.randn(20000, 8, generator=torch.Generator().manual_seed(0))
    matched = gaussian_fit(z, prior_std=5.0)
    assert matched["code_mean_error"] < 0.05 and matched["code_cov_error"] < 0.05
    narrow = gaussian_fit(0.8 * z, prior_std=5.0)  # variance 0.64x: the covariance is 36% off
    assert narrow["code_cov_error"] == pytest.approx(0.36, abs=0.03)
    shifted = gaussian_fit(z + torch.tensor([2.5] + [0.0] * 7), prior_std=5.0)
    assert shifted["code_mean_error"] == pytest.approx(0.5, abs=0.05)


def test_gaussian_covariance_parts_separate_a_wrong_spread_from_correlated_dimensions():
    z = 5 * torch.randn(20000, 8, generator=torch.Generator().manual_seed(0))
    narrow = gaussian_covariance_parts(0.8 * z, prior_std=5.0)  # every variance 0.64x, no correlation
    assert narrow["code_cov_diagonal"] == pytest.approx(0.36, abs=0.03)
    assert narrow["code_cov_off_diagonal"] < 0.05 and narrow["code_largest_correlation"] < 0.05
    mixed = z.clone()
    mixed[:, 1] = 0.6 * z[:, 0] + 0.8 * z[:, 1]  # same variance, correlation 0.6 between dimensions 0 and 1
    parts = gaussian_covariance_parts(mixed, prior_std=5.0)
    assert parts["code_largest_correlation"] == pytest.approx(0.6, abs=0.03)
    assert parts["code_cov_diagonal"] < 0.05 < parts["code_cov_off_diagonal"]
    # The two parts make up gaussian_fit's covariance error.
    total = gaussian_fit(mixed, prior_std=5.0)["code_cov_error"]
    assert parts["code_cov_diagonal"] ** 2 + parts["code_cov_off_diagonal"] ** 2 == pytest.approx(total ** 2)


def test_components_fit_by_hand():
    component = np.array([0, 0, 1, 1, 2, 0, 1, 2])
    on_prior = np.array([True, True, True, False, True, True, True, False])
    labels = np.array([0, 1, 1, 1, 2, 0, 2, 2])
    fit = components_fit(component, on_prior, n_components=4, labels=labels)
    # component 3 holds nothing; 6 of 8 codes on the prior; own and on the prior: rows 0, 2, 4, 5
    assert fit == {"components_used": 3, "codes_on_prior": 0.75, "codes_on_own_component": 0.5}
    assert "codes_on_own_component" not in components_fit(component, on_prior, n_components=4)
