"""What the pipeline does with each model variant: the evaluations it gets beyond every model's, its figures, its
default search space, and the paper tables its runs are reported in.

A plan is derived from the model class where the class's own attributes decide it (head_plan), and stated in
one table, STATED, a row per registered variant, where they do not:

- Derived from the y head (AAEModel.y_head, BY_HEAD): a head that gives classes is scored by classification
  and reported in the semi-supervised table (and, on a model that renders a style as each category, gets the
  style grid); one that gives clusters is scored by clustering, drawn as cluster heads and reported in the
  clustering table.
- Stated: the default search space (conf/search/<name>.yaml); the figures of the codes (the prior grid, which
  only a decoder reading z alone can draw; the dimensionality-reduction map in place of the code scatter); the
  supervised AAE's style grid (its decoder is given the label; it has no y head); and the dimensionality-
  reduction evaluation and table (its config decides whether its head gives classes or clusters, and
  dim_reduction scores whichever).

The y head is read off the class rather than off a model built from the variant's default config: a plan then
builds no networks, draws nothing from the global RNG and needs no config that builds. So the classes that fix
their head state it as a class attribute (aae.variants.base.AAEModel); a class whose config decides it has a
property, and gets nothing by head. Rows are found by class, so a built-in named by import path gets its row;
a new variant (an import path, or register_variant) gets what its attributes give: DEFAULT_PLAN without a head.

Evaluations, figures and tables are named here and looked up where they are defined (pipeline.stages.evaluate
EVALUATIONS, pipeline.stages.visualize FIGURES, pipeline.report PAPER_TABLES), so this module imports nothing
of the pipeline and every stage can read it. tests/pipeline/test_plans.py checks that STATED and
aae.variants.VARIANTS name the same set, that every name a plan gives exists there, and that each plan agrees
with the head of a built model.
"""

from __future__ import annotations

from dataclasses import dataclass

EVERY_MODEL_FIGURES = ("samples", "curves")
EVERY_MODEL_TABLES = ("parzen",)  # every model is scored on Parzen log-likelihood


@dataclass(frozen=True)
class VariantPlan:
    """One variant's evaluations (beyond every model's), figures, default search space and paper tables."""

    evaluations: tuple[str, ...] = ()
    figures: tuple[str, ...] = ("codes", *EVERY_MODEL_FIGURES)
    search_space: str | None = None  # conf/search/<name>.yaml; None: `tune` needs --space
    paper_tables: tuple[str, ...] = EVERY_MODEL_TABLES


DEFAULT_PLAN = VariantPlan()  # a model without a y head and without a row in STATED


@dataclass(frozen=True)
class Stated:
    """What a variant's attributes do not decide. Its evaluations and paper tables follow its head's; its figures
    come first, before its head's and every model's."""

    evaluations: tuple[str, ...] = ()
    figures: tuple[str, ...] = ("codes",)
    search_space: str | None = None
    paper_tables: tuple[str, ...] = ()


@dataclass(frozen=True)
class HeadPlan:
    """What a y head brings: the evaluation that scores it, the figure that shows it, the table it is reported in."""

    evaluations: tuple[str, ...] = ()
    figures: tuple[str, ...] = ()
    paper_tables: tuple[str, ...] = ()


BY_HEAD: dict[str, HeadPlan] = {
    "classes": HeadPlan(("classification",), (), ("semisup",)),
    "clusters": HeadPlan(("clustering", "cluster_heads"), ("cluster_heads",), ("clustering",)),
}
CLASS_STYLE_GRID = ("style_grid",)  # an evaluation and a figure: each style rendered as each class

# A prior grid decodes z alone (a figure may still decline: prior_grid for a code that is not 2-D).
STATED: dict[str, Stated] = {
    "unsupervised": Stated(figures=("codes", "prior_grid"), search_space="unsupervised"),
    "vae": Stated(figures=("codes", "prior_grid"), search_space="vae"),
    "label_regularised": Stated(figures=("codes", "prior_grid")),
    "supervised": Stated(evaluations=CLASS_STYLE_GRID, figures=("codes", *CLASS_STYLE_GRID)),
    "semi_supervised": Stated(search_space="semisup"),
    "clustering": Stated(search_space="clustering"),
    "dim_reduction": Stated(evaluations=("dim_reduction",), figures=("dimred_map",), search_space="dimred",
                            paper_tables=("dimred",)),
}


def head_plan(cls: type) -> HeadPlan:
    """What the y head a model class fixes brings; nothing where it has none or its config decides (y_head is then
    a property on the class, not a string)."""
    head = getattr(cls, "y_head", None)
    if not isinstance(head, str) or head not in BY_HEAD:
        return HeadPlan()
    plan = BY_HEAD[head]
    if head == "classes" and callable(getattr(cls, "render_as_each_category", None)):
        plan = HeadPlan((*plan.evaluations, *CLASS_STYLE_GRID), (*plan.figures, *CLASS_STYLE_GRID), plan.paper_tables)
    return plan


def plan_for(variant: str) -> VariantPlan:
    """The plan of a variant (registry name or import path): what its head brings and its class's row in STATED.
    ValueError for a name that is neither (the config check refuses such a name before any stage asks)."""
    # Imported here: the CLI imports this module (report, search spaces) and keeps `--help` free of torch.
    from aae.variants import VARIANTS, variant_class

    cls = variant_class(variant)
    stated = next((STATED[name] for name, known in VARIANTS.items() if known is cls and name in STATED), Stated())
    by_head = head_plan(cls)
    return VariantPlan(
        evaluations=(*by_head.evaluations, *stated.evaluations),
        figures=(*stated.figures, *by_head.figures, *EVERY_MODEL_FIGURES),
        search_space=stated.search_space,
        paper_tables=(*by_head.paper_tables, *stated.paper_tables, *EVERY_MODEL_TABLES),
    )
