"""Stage 4: the paper's figures for the experiment that was run, as PNGs under <run>/figures/.

Which figures of FIGURES a variant gets its plan says (pipeline.plans). Figures are drawn on
matplotlib's Agg canvas through the object API (no pyplot, no global backend state) and written atomically.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.decomposition import PCA

from aae.priors import GaussianPrior
from aae.variants.base import AAEModel
from pipeline.config import Config
from pipeline.data.splits import Split, load_eval_split
from pipeline.plans import plan_for
from pipeline.rundir import RunDir, atomic_write_bytes
from pipeline.stages import FIGURE_DIR
from pipeline.stages.trained import batched, load_trained_model

SCATTER_POINTS = 5000  # hold-out codes drawn in the scatter plots
GRID = 20  # images per side of the prior-grid figure
STYLE_ROWS = 10  # test digits whose style is rendered as every class
CLUSTER_MEMBERS = 10  # members shown beside each cluster head


@dataclass
class Canvas:
    """What every figure reads: the trained model, the test split, the run and its config."""

    config: Config
    run: RunDir
    model: AAEModel
    test: Split


def codes(c: Canvas) -> Figure:
    """Hold-out codes coloured by label: 2-D codes as they are, longer ones projected on 2 principal axes."""
    x, y = c.test.x[:SCATTER_POINTS], c.test.y[:SCATTER_POINTS]
    points, how = _to_2d(batched(c.model.encode, x).numpy())
    fig, ax = _figure(6.5, 6)
    prior = getattr(c.model, "prior", None)
    if prior is not None and prior.dim == 2:  # the shape the adversary pulls the codes towards, for comparison
        target = prior.sample(2000, generator=torch.Generator().manual_seed(0)).numpy()
        ax.scatter(target[:, 0], target[:, 1], s=2, color="0.8", label="prior sample")
    _scatter_by_label(ax, points, y)
    ax.set_title(f"Test-set codes {how}, coloured by label")
    return fig


def prior_grid(c: Canvas) -> Figure | None:
    """Images decoded from a grid over a 2-D prior: Gaussian percentiles, or the span of other priors' draws."""
    prior = getattr(c.model, "prior", None)
    if prior is None or prior.dim != 2:
        return None
    if isinstance(prior, GaussianPrior):  # evenly spaced percentiles, as in the paper's figure
        spots = torch.distributions.Normal(prior.mean, prior.std).icdf(torch.linspace(0.03, 0.97, GRID))
        axes, how = (spots, spots), "Gaussian percentiles 3%-97%"
    else:
        draws = prior.sample(10_000, generator=torch.Generator().manual_seed(0))
        lo, hi = torch.quantile(draws, 0.01, dim=0), torch.quantile(draws, 0.99, dim=0)
        axes = tuple(torch.linspace(float(lo[i]), float(hi[i]), GRID) for i in range(2))
        how = "the prior's 1%-99% range"
    grid = torch.stack(torch.meshgrid(axes[0], axes[1].flip(0), indexing="xy"), -1).reshape(-1, 2)
    images = c.model.decode(grid.to(c.model.device)).cpu()
    fig, ax = _figure(8, 8.3)
    _show_mosaic(ax, images, GRID, GRID)
    ax.set_title(f"Decoded from a {GRID}x{GRID} grid over z ({how});\nz1 left→right, z2 bottom→top")
    return fig


def style_grid(c: Canvas) -> Figure:
    """Rows: the style z of one test digit (shown first); columns: that style decoded as each class."""
    model, x = c.model, c.test.x[:STYLE_ROWS]
    rendered = model.render_as_each_category(x).cpu()
    n_classes = rendered.shape[1]
    rows = torch.cat([x[:, None], rendered], 1).reshape(-1, x.shape[1])
    fig, ax = _figure(7.5, 7.3)
    _show_mosaic(ax, rows, len(x), n_classes + 1)
    ax.set_title("Style and content: each row keeps one test digit's style z (first column: the digit)\n"
                 f"and decodes it with label y = 0 … {n_classes - 1} (columns)")
    return fig


def cluster_heads(c: Canvas) -> Figure:
    """Each cluster's head (y_i decoded with z = 0, first column) and its most confident test members."""
    model = c.model
    k = model.n_categories
    heads = model.decoded_heads()
    probs = batched(model.classify, c.test.x)
    assigned = probs.argmax(1)
    rows = []
    for i in range(k):
        members = torch.nonzero(assigned == i).flatten()
        best = members[probs[members, i].argsort(descending=True)[:CLUSTER_MEMBERS]]
        blank = torch.zeros(CLUSTER_MEMBERS - len(best), c.test.x.shape[1])
        rows.append(torch.cat([heads[i : i + 1].cpu().flatten(1), c.test.x[best], blank]))
    fig, ax = _figure(6.5, 0.55 * k + 1)
    _show_mosaic(ax, torch.cat(rows), k, CLUSTER_MEMBERS + 1)
    ax.set_title(f"{k} clusters: head (y_i decoded with z = 0, first column),\n"
                 "then the test digits it holds most confidently")
    ax.set_yticks([(i + 0.5) * _side(c.test.x.shape[1])[0] for i in range(k)], [str(i) for i in range(k)])
    ax.set_ylabel("cluster")
    return fig


def dimred_map(c: Canvas) -> Figure:
    """The dimensionality-reduction map: encode(x) = W_C·y + z coloured by label, cluster heads marked."""
    x, y = c.test.x[:SCATTER_POINTS], c.test.y[:SCATTER_POINTS]
    points = batched(c.model.encode, x).numpy()
    heads = c.model.cluster_heads().cpu().numpy()
    projection = PCA(2).fit(points) if points.shape[1] > 2 else None
    if projection is not None:
        points, heads = projection.transform(points), projection.transform(heads)
    fig, ax = _figure(6.5, 6)
    _scatter_by_label(ax, points, y)
    ax.scatter(heads[:, 0], heads[:, 1], marker="X", s=120, c="black", edgecolors="white")
    for i, (hx, hy) in enumerate(heads):  # with labels, head i is class i's
        ax.annotate(str(i), (hx, hy), xytext=(5, 5), textcoords="offset points", fontsize=9, weight="bold")
    how = f"{c.model.config.z_dim}-D map, principal axes" if projection is not None else "2-D map"
    ax.set_title(f"Dimensionality reduction ({how}):\ntest digits coloured by label, cluster heads ✕ numbered")
    return fig


def samples(c: Canvas) -> Figure:
    """100 images decoded from prior draws."""
    with torch.random.fork_rng():
        torch.manual_seed(c.config.train.seed)
        images = c.model.sample(100).cpu()
    fig, ax = _figure(6, 6.3)
    _show_mosaic(ax, images, 10, 10)
    ax.set_title("Random samples: prior draws decoded")
    return fig


def curves(c: Canvas) -> Figure | None:
    """Training losses and the validation metric per epoch, from metrics.jsonl."""
    rows = c.run.read_metrics()
    if not rows:
        return None
    epochs = [row["epoch"] for row in rows]
    keys = sorted({k for row in rows for k in row if k.startswith("train/")})
    # Reconstruction losses are summed over pixels (~100s of nats); the others are ~1: separate panels.
    panels = {"Reconstruction loss": [k for k in keys if "recon" in k],
              "Adversarial and other losses": [k for k in keys if "recon" not in k]}
    fig = Figure(figsize=(14, 4), layout="constrained")
    axes = fig.subplots(1, 3)
    for ax, (title, names) in zip(axes, panels.items(), strict=False):
        for key in names:
            ax.plot(epochs, [row.get(key, math.nan) for row in rows], marker=".", label=key.removeprefix("train/"))
        ax.set(title=f"{title} (train, mean per epoch)", xlabel="epoch", ylabel="loss")
        if names:
            ax.legend(fontsize=8)
    key = "val/error" if "val/error" in rows[0] else "val/recon_bce"
    axes[2].plot(epochs, [row.get(key, math.nan) for row in rows], marker="o", color="tab:red")
    axes[2].set(title=f"Validation: {key}", xlabel="epoch",
                ylabel="error %" if key == "val/error" else "BCE (nats per image)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig


FigureFn = Callable[[Canvas], Figure | None]
# The paper's figures a variant's plan may name (pipeline.plans), by function name.
FIGURES: dict[str, FigureFn] = {f.__name__: f for f in (codes, prior_grid, style_grid, cluster_heads, dimred_map,
                                                        samples, curves)}


def visualize(config: Config, run: RunDir) -> dict[str, dict[str, str]]:
    """Draw the variant's figures from the best checkpoint; returns {"figures": name → PNG path within the run}."""
    test = load_eval_split(config, "test")
    model = load_trained_model(config, run, input_dim=test.x.shape[1]).model
    canvas = Canvas(config, run, model, test)
    written = {}
    for draw in (FIGURES[name] for name in plan_for(config.model.variant).figures):
        with torch.no_grad():
            fig = draw(canvas)
        if fig is None:
            continue
        relative = f"{FIGURE_DIR}/{draw.__name__}.png"
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110)
        atomic_write_bytes(run.path / relative, buffer.getvalue())
        written[draw.__name__] = relative
    return {"figures": written}


# --- drawing helpers ----------------------------------------------------------------------------------


def _figure(width: float, height: float) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots()


def _to_2d(points: np.ndarray) -> tuple[np.ndarray, str]:
    """The points themselves if 2-D, else their projection on the first two principal axes."""
    if points.shape[1] == 2:
        return points, "(2-D)"
    return PCA(2).fit_transform(points), f"({points.shape[1]}-D, first two principal axes)"


def _scatter_by_label(ax: Axes, points: np.ndarray, labels: np.ndarray) -> None:
    palette = colormaps["tab10"]
    for label in np.unique(labels):
        at = labels == label
        ax.scatter(points[at, 0], points[at, 1], s=3, alpha=0.6, color=palette(int(label) % 10), label=str(label))
    ax.legend(title="label", markerscale=4, fontsize=8, loc="best")
    ax.set(xlabel="code axis 1", ylabel="code axis 2")


def _side(dim: int) -> tuple[int, int, int]:
    """(height, width, channels) of a flat image: 28x28 grey (MNIST) or 32x32 colour (3072)."""
    if dim == 3 * 32 * 32:
        return 32, 32, 3
    side = math.isqrt(dim)
    return side, side, 1


def mosaic(images: torch.Tensor | np.ndarray, rows: int, cols: int) -> np.ndarray:
    """rows*cols images (flat, (H, W) or (C, H, W)) tiled into one (rows*H, cols*W) grey or (…, 3) colour picture;
    missing tiles are black."""
    images = torch.as_tensor(np.asarray(images, dtype=np.float32)).reshape(len(images), -1)
    h, w, ch = _side(images.shape[1])
    images = torch.cat([images, torch.zeros(rows * cols - len(images), images.shape[1])])
    tiles = images.reshape(rows, cols, ch, h, w).permute(0, 3, 1, 4, 2).clamp(0, 1)
    picture = tiles.reshape(rows * h, cols * w, ch).numpy()
    return picture[..., 0] if ch == 1 else picture


def save_image_grid(images: np.ndarray, path: Path) -> None:
    """Images as one PNG, as square a grid as their number allows (written whole or not at all)."""
    from matplotlib.image import imsave

    cols = math.ceil(math.sqrt(len(images)))
    picture = mosaic(images, math.ceil(len(images) / cols), cols)
    buffer = io.BytesIO()
    imsave(buffer, picture, cmap="gray", vmin=0, vmax=1, format="png")
    atomic_write_bytes(path, buffer.getvalue())


def _show_mosaic(ax: Axes, images: torch.Tensor, rows: int, cols: int) -> None:
    """Tile rows*cols images (flat, or (C, H, W) as the conv decoder gives them) into one picture, with thin
    separators, and hide the axes' ticks."""
    picture = mosaic(images, rows, cols)
    h, w, _ = _side(int(np.prod(images.shape[1:])))
    ax.imshow(picture, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    for i in range(1, cols):
        ax.axvline(i * w - 0.5, color="tab:blue", lw=0.3)
    for i in range(1, rows):
        ax.axhline(i * h - 0.5, color="tab:blue", lw=0.3)
    ax.set_xticks([])
    ax.set_yticks([])
