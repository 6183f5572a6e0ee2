"""What the pipeline does with each model variant, in one table: the evaluations it gets beyond every model's,
its figures, its default search space, and the paper tables its runs are reported in.

Evaluations, figures and tables are named here and looked up where they are defined (pipeline.stages.evaluate
EVALUATIONS, pipeline.stages.visualize FIGURES, pipeline.report PAPER_TABLES), so this module imports nothing
of the pipeline and every stage can read it. A variant named by import path gets DEFAULT_PLAN.
tests/pipeline/test_plans.py checks that PLANS and aae.variants.VARIANTS name the same set, that every name
here exists there, and that each plan agrees with the model's own attributes (y_head).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VariantPlan:
    """One variant's evaluations (beyond every model's), figures, default search space and paper tables."""

    evaluations: tuple[str, ...] = ()
    figures: tuple[str, ...] = ("codes", "samples", "curves")
    search_space: str | None = None  # conf/search/<name>.yaml; None: `tune` needs --space
    paper_tables: tuple[str, ...] = ("parzen",)  # every model is scored on Parzen log-likelihood


DEFAULT_PLAN = VariantPlan()

# The supervised AAE has no classifier (its decoder is given y): it gets the style grid. A figure may still
# decline (prior_grid for a code that is not 2-D).
PLANS: dict[str, VariantPlan] = {
    "unsupervised": VariantPlan(figures=("codes", "prior_grid", "samples", "curves"), search_space="unsupervised"),
    "vae": VariantPlan(figures=("codes", "prior_grid", "samples", "curves"), search_space="vae"),
    "label_regularised": VariantPlan(figures=("codes", "prior_grid", "samples", "curves")),
    "supervised": VariantPlan(evaluations=("style_grid",), figures=("codes", "style_grid", "samples", "curves")),
    "semi_supervised": VariantPlan(evaluations=("classification", "style_grid"),
                                   figures=("codes", "style_grid", "samples", "curves"), search_space="semisup",
                                   paper_tables=("semisup", "parzen")),
    "clustering": VariantPlan(evaluations=("clustering",), figures=("codes", "cluster_heads", "samples", "curves"),
                              search_space="clustering", paper_tables=("clustering", "parzen")),
    "dim_reduction": VariantPlan(evaluations=("dim_reduction",), figures=("dimred_map", "samples", "curves"),
                                 search_space="dimred", paper_tables=("dimred", "parzen")),
}


def plan_for(variant: str) -> VariantPlan:
    """The plan of a variant's registry name; DEFAULT_PLAN for any other (a variant named by import path)."""
    return PLANS.get(variant, DEFAULT_PLAN)
