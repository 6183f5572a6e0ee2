"""Evaluation metrics from the paper: classification / cluster error (%), NMI/ARI, Parzen log-likelihood."""

from __future__ import annotations

import math

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor

# Smallest probability fed to log() in the BCE: keeps a saturated sigmoid from giving inf.
BCE_EPS = 1e-7
# Parzen widths tried on the validation set: the grid of Goodfellow et al. (2014), which the paper follows.
PARZEN_SIGMAS: tuple[float, ...] = tuple(float(s) for s in np.logspace(-1, 0, 10))


def _to_numpy(x: ArrayLike) -> np.ndarray:
    """Return `x` as a numpy array (detached and on the CPU if it is a tensor)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _hard_labels(probs_or_labels: ArrayLike) -> np.ndarray:
    """Turn class/cluster probabilities (N, C) into argmax ids (N,); pass ids (N,) through."""
    arr = _to_numpy(probs_or_labels)
    if arr.ndim == 2:
        return arr.argmax(axis=1).astype(np.int64)
    if arr.ndim == 1:
        return arr.astype(np.int64)
    raise ValueError(f"expected probabilities (N, C) or labels (N,), got shape {arr.shape}")


def _int_labels(labels: ArrayLike) -> np.ndarray:
    """Return labels as a 1-D int64 array."""
    return _to_numpy(labels).reshape(-1).astype(np.int64)


# --- classification -----------------------------------------------------------------------------------


def classification_error(probs_or_pred: ArrayLike, labels: ArrayLike) -> float:
    """Percentage of examples misclassified; takes class probabilities (N, C) or predicted labels (N,)."""
    pred, true = _hard_labels(probs_or_pred), _int_labels(labels)
    if pred.shape != true.shape:
        raise ValueError(f"{pred.shape[0]} predictions for {true.shape[0]} labels")
    return float(100.0 * np.mean(pred != true))


def per_class_error(pred: ArrayLike, labels: ArrayLike, n_classes: int) -> list[float]:
    """Error % within each true class (NaN for a class with no examples); takes probs or labels."""
    pred, true = _hard_labels(pred), _int_labels(labels)
    errors = []
    for c in range(n_classes):
        in_class = true == c
        errors.append(float(100.0 * np.mean(pred[in_class] != c)) if in_class.any() else math.nan)
    return errors


# --- clustering ---------------------------------------------------------------------------------------


def category_log_odds(logits: torch.Tensor) -> torch.Tensor:
    """log(q_i / (1 - q_i)) of q = softmax(logits), computed from the logits as l_i - logsumexp_{j != i} l_j.

    It orders the examples as q(y_i | x) does where float32 probabilities cannot: a softmax rounds to exactly 1.0
    once one logit leads the others by about 17, so a confident model ties thousands of examples at q = 1.
    """
    k = logits.shape[1]
    own = torch.eye(k, dtype=torch.bool, device=logits.device)
    others = logits.unsqueeze(1).expand(-1, k, -1).masked_fill(own, -math.inf)
    return logits - torch.logsumexp(others, dim=2)


def paper_cluster_labels(train_scores: ArrayLike, train_labels: ArrayLike) -> np.ndarray:
    """The paper's rule: cluster i takes the label of the training x_n that maximises q(y_i | x_n).

    train_scores: (N, K) q(y|x) or any per-category score in the same order; pass `category_log_odds`, since
    saturated probabilities tie and the first of the tied examples would decide the cluster's label.
    """
    scores = _to_numpy(train_scores)
    if scores.ndim != 2:
        raise ValueError(f"expected per-cluster scores (N, K), got shape {scores.shape}")
    return _int_labels(train_labels)[scores.argmax(axis=0)]


def majority_cluster_labels(
    train_assignments: ArrayLike, train_labels: ArrayLike, n_clusters: int
) -> np.ndarray:
    """Each cluster takes the most common label among the training examples assigned to it."""
    assign, labels = _hard_labels(train_assignments), _int_labels(train_labels)
    # A cluster no training example fell into gets the overall most common label, the best blind guess.
    fallback = np.bincount(labels).argmax()
    mapping = np.full(n_clusters, fallback, dtype=np.int64)
    for k in range(n_clusters):
        members = labels[assign == k]
        if members.size:
            mapping[k] = np.bincount(members).argmax()
    return mapping


def cluster_error(test_probs: ArrayLike, cluster_to_label: ArrayLike, test_labels: ArrayLike) -> float:
    """Error % when each test example takes its cluster's label; takes cluster probs (N, K) or ids (N,)."""
    mapping = _int_labels(cluster_to_label)
    return classification_error(mapping[_hard_labels(test_probs)], test_labels)


def paper_cluster_error(
    train_scores: ArrayLike, train_labels: ArrayLike, test_probs: ArrayLike, test_labels: ArrayLike
) -> float:
    """The paper's unsupervised clustering error % on the test set (labels from `paper_cluster_labels`)."""
    return cluster_error(test_probs, paper_cluster_labels(train_scores, train_labels), test_labels)


def cluster_error_majority(
    train_probs: ArrayLike,
    train_labels: ArrayLike,
    test_probs: ArrayLike,
    test_labels: ArrayLike,
    n_clusters: int | None = None,
) -> float:
    """Test error % with majority-vote cluster labels; takes probs (N, K) or ids (then give n_clusters)."""
    train_assign, test_assign = _hard_labels(train_probs), _hard_labels(test_probs)
    if n_clusters is None:
        probs = _to_numpy(train_probs)
        n_clusters = (
            probs.shape[1] if probs.ndim == 2 else int(max(train_assign.max(), test_assign.max()) + 1)
        )
    mapping = majority_cluster_labels(train_assign, train_labels, n_clusters)
    return cluster_error(test_assign, mapping, test_labels)


def nmi(probs_or_assignments: ArrayLike, labels: ArrayLike) -> float:
    """Normalised mutual information (arithmetic mean normaliser) between clusters and labels, in [0, 1]."""
    # Imported here: scikit-learn (with SciPy) takes ~2 s to import, and loading a model for predict never needs it.
    from sklearn.metrics import normalized_mutual_info_score

    return float(normalized_mutual_info_score(_int_labels(labels), _hard_labels(probs_or_assignments)))


def ari(probs_or_assignments: ArrayLike, labels: ArrayLike) -> float:
    """Adjusted Rand index between clusters and labels (1 = identical partitions, ~0 = chance)."""
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(_int_labels(labels), _hard_labels(probs_or_assignments)))


def clustering_report(
    train_scores: ArrayLike, train_labels: ArrayLike, test_probs: ArrayLike, test_labels: ArrayLike
) -> dict[str, float]:
    """Test-set cluster_error (paper's rule, %), cluster_error_majority (%), nmi and ari; train_scores as for
    `paper_cluster_labels` (each training example's cluster is its argmax)."""
    return {
        "cluster_error": paper_cluster_error(train_scores, train_labels, test_probs, test_labels),
        "cluster_error_majority": cluster_error_majority(train_scores, train_labels, test_probs, test_labels),
        "nmi": nmi(test_probs, test_labels),
        "ari": ari(test_probs, test_labels),
    }


# --- degeneracy diagnostics ---------------------------------------------------------------------------

# A category counts as used when it takes at least this share of the examples (0.5%).
USED_SHARE = 0.005


def category_usage(probs: ArrayLike, min_share: float = USED_SHARE) -> dict[str, float]:
    """How many categories argmax q(y|x) uses (each >= min_share of the rows) and the entropy (nats) of the
    predicted-category histogram; a collapsed head uses few and has low entropy (log m when uniform)."""
    p = _to_numpy(probs)
    counts = np.bincount(p.argmax(1), minlength=p.shape[1]).astype(np.float64)
    share = counts / max(counts.sum(), 1.0)
    nonzero = share[share > 0]
    return {"clusters_used": int((share >= min_share).sum()), "y_entropy": float(-(nonzero * np.log(nonzero)).sum())}


def spread_ratio(codes: ArrayLike, prior_std: float) -> float:
    """The codes' standard deviation (averaged over dimensions) relative to the prior's: 1 when matched."""
    return float(_to_numpy(codes).std(0).mean() / prior_std)


def degeneracy_signs(clusters_used: float | None, n_categories: int | None, z_std_ratio: float | None
                     ) -> list[str]:
    """What marks a degenerate model: fewer than 3/4 of the categories used, or a style spread more than 3x
    (or under 1/3 of) its prior's. Empty for a healthy model."""
    signs = []
    if clusters_used is not None and n_categories and clusters_used < 0.75 * n_categories:
        signs.append(f"only {int(clusters_used)} of {n_categories} categories used")
    if z_std_ratio is not None and not 1 / 3 <= z_std_ratio <= 3:
        signs.append(f"style codes spread {z_std_ratio:.2g}x their prior's std")
    return signs


# --- do the codes sit on their prior? (the paper's figures, as numbers) --------------------------------

def gaussian_fit(codes: ArrayLike, prior_std: float, prior_mean: float = 0.0) -> dict[str, float]:
    """How far the codes' moments are from an isotropic Gaussian prior's: the largest |mean offset| in
    prior stds, and the covariance's relative Frobenius error ||C - σ²I|| / ||σ²I|| (0 when matched)."""
    z = _as_float64_matrix(codes)
    variance = prior_std ** 2
    target = variance * torch.eye(z.shape[1], dtype=torch.float64)
    return {"code_mean_error": float(((z.mean(0) - prior_mean).abs() / prior_std).max()),
            "code_cov_error": float(torch.linalg.matrix_norm(torch.cov(z.T).reshape(target.shape) - target)
                                    / torch.linalg.matrix_norm(target))}


def gaussian_covariance_parts(codes: ArrayLike, prior_std: float) -> dict[str, float]:
    """Where gaussian_fit's covariance error comes from: its diagonal part (each dimension's spread against σ²)
    and its off-diagonal part (correlations between dimensions), both relative to ||σ²I|| so that their squares
    add up to code_cov_error's square, and the largest |correlation| between two dimensions."""
    z = _as_float64_matrix(codes) / prior_std
    cov = torch.cov(z.T).reshape(z.shape[1], z.shape[1])
    eye = torch.eye(len(cov), dtype=cov.dtype)
    diagonal = torch.diag(torch.diag(cov))
    scale = torch.linalg.matrix_norm(eye)
    corr = cov / torch.sqrt(torch.outer(torch.diag(cov), torch.diag(cov)))
    return {"code_cov_diagonal": float(torch.linalg.matrix_norm(diagonal - eye) / scale),
            "code_cov_off_diagonal": float(torch.linalg.matrix_norm(cov - diagonal) / scale),
            "code_largest_correlation": float((corr - eye).abs().max())}


def components_fit(component: ArrayLike, on_prior: ArrayLike, n_components: int, labels: ArrayLike | None = None,
                   min_share: float = USED_SHARE) -> dict[str, float]:
    """For codes located on a prior with components (its `locate`): how many components hold at least
    min_share of the codes, the share of codes on the prior, and, given labels, the share on the prior
    inside their own class's component."""
    component, on_prior = _int_labels(component), _to_numpy(on_prior).reshape(-1).astype(bool)
    share = np.bincount(component, minlength=n_components) / max(len(component), 1)
    fit = {"components_used": int((share >= min_share).sum()), "codes_on_prior": float(on_prior.mean())}
    if labels is not None:
        fit["codes_on_own_component"] = float((on_prior & (component == _int_labels(labels))).mean())
    return fit


def fit_reference_classifier(x: torch.Tensor, y: torch.Tensor, n_classes: int, epochs: int = 3, seed: int = 0
                             ) -> torch.nn.Module:
    """A small MLP digit classifier (about 98% on MNIST) that judges generated images, e.g. whether a
    style grid's column really shows its label."""
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 256), torch.nn.ReLU(), torch.nn.Linear(256, n_classes))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(epochs):
        for rows in torch.randperm(len(x), generator=generator).split(128):
            loss = torch.nn.functional.cross_entropy(net(x[rows]), y[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return net.eval()


# --- generative quality -------------------------------------------------------------------------------


def _as_float64_matrix(x: ArrayLike) -> torch.Tensor:
    """Flatten to (N, D) float64 on the CPU; float64 keeps |x|^2 + |s|^2 - 2 x.s accurate at 784 dims."""
    t = x.detach().cpu() if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    return t.to(torch.float64).reshape(t.shape[0], -1)


def _parzen_log_likelihoods(
    samples: ArrayLike, data: ArrayLike, sigmas: list[float], batch_size: int
) -> list[float]:
    """Mean Parzen log-likelihood of `data` for each sigma, reusing each batch's distances for all sigmas."""
    s, x = _as_float64_matrix(samples), _as_float64_matrix(data)
    if s.shape[1] != x.shape[1]:
        raise ValueError(f"samples have {s.shape[1]} dimensions, data {x.shape[1]}")
    n_samples, dim = s.shape
    s_sq = (s * s).sum(dim=1)
    totals = [0.0] * len(sigmas)
    for xb in x.split(batch_size):
        xb_sq = (xb * xb).sum(dim=1)
        # Running logsumexp over sample batches, one row per sigma: memory is batch_size^2, not N x K.
        running = torch.full((len(sigmas), xb.shape[0]), -math.inf, dtype=torch.float64)
        for sb, sb_sq in zip(s.split(batch_size), s_sq.split(batch_size), strict=True):
            sq_dist = (xb_sq[:, None] + sb_sq[None, :] - 2.0 * xb @ sb.T).clamp_min(0.0)
            for i, sigma in enumerate(sigmas):
                batch_lse = torch.logsumexp(sq_dist / (-2.0 * sigma**2), dim=1)
                running[i] = torch.logaddexp(running[i], batch_lse)
        for i in range(len(sigmas)):
            totals[i] += float(running[i].sum())
    n_data = x.shape[0]
    return [
        totals[i] / n_data - math.log(n_samples) - 0.5 * dim * math.log(2.0 * math.pi * sigma**2)
        for i, sigma in enumerate(sigmas)
    ]


def parzen_log_likelihood(samples: ArrayLike, data: ArrayLike, sigma: float, batch_size: int = 1000) -> float:
    """Mean over data x of log((1/K) sum_k N(x; s_k, sigma^2 I)), in nats; batched over data and samples."""
    return _parzen_log_likelihoods(samples, data, [float(sigma)], batch_size)[0]


def select_parzen_sigma(
    samples: ArrayLike,
    validation: ArrayLike,
    sigmas: ArrayLike | tuple[float, ...] = PARZEN_SIGMAS,
    batch_size: int = 1000,
) -> tuple[float, float]:
    """Return (sigma, validation log-likelihood in nats) for the grid sigma that maximises it."""
    grid = [float(s) for s in _to_numpy(sigmas).reshape(-1)]
    lls = _parzen_log_likelihoods(samples, validation, grid, batch_size)
    best = int(np.argmax(lls))
    return grid[best], lls[best]


# --- reconstruction -----------------------------------------------------------------------------------


def reconstruction_errors(x: ArrayLike, x_hat: ArrayLike) -> dict[str, float]:
    """recon_mse: mean per pixel; recon_bce: summed over pixels, mean over examples (x_hat clamped)."""
    x64, xh64 = _as_float64_matrix(x), _as_float64_matrix(x_hat)
    if x64.shape != xh64.shape:
        raise ValueError(f"x has shape {tuple(x64.shape)}, x_hat {tuple(xh64.shape)}")
    p = xh64.clamp(BCE_EPS, 1.0 - BCE_EPS)
    bce = -(x64 * p.log() + (1.0 - x64) * (1.0 - p).log()).sum(dim=1).mean()
    return {"recon_mse": float(((x64 - xh64) ** 2).mean()), "recon_bce": float(bce)}
