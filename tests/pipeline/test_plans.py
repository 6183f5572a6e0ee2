"""The variant plans table: the same variants as the model registry, names that exist, plans that agree with
what each model says of itself."""

from __future__ import annotations

import pytest

from aae.variants import VARIANTS, build_model
from pipeline.plans import DEFAULT_PLAN, PLANS, plan_for
from pipeline.report import PAPER_TABLES
from pipeline.search_space import SEARCH_DIR
from pipeline.stages.evaluate import EVALUATIONS
from pipeline.stages.visualize import FIGURES


def test_plans_and_the_model_registry_name_the_same_variants() -> None:
    assert set(PLANS) == set(VARIANTS)


@pytest.mark.parametrize("variant", sorted(PLANS))
def test_every_name_a_plan_gives_exists_where_it_is_defined(variant: str) -> None:
    plan = PLANS[variant]
    assert set(plan.evaluations) <= set(EVALUATIONS)
    assert set(plan.figures) <= set(FIGURES)
    assert set(plan.paper_tables) <= {table.name for table in PAPER_TABLES}
    assert plan.search_space is None or (SEARCH_DIR / f"{plan.search_space}.yaml").is_file()


@pytest.mark.parametrize("variant", sorted(PLANS))
def test_each_plan_scores_the_head_the_model_has(variant: str) -> None:
    model = build_model(variant, {"hidden": (8,), **({} if variant == "vae" else {"disc_hidden": (8,)})})
    scored = set(PLANS[variant].evaluations)
    if variant == "dim_reduction":  # scores its head as classes or clusters, whichever its config trains
        assert model.y_head == "classes" and scored == {"dim_reduction"}
    elif model.y_head is None:
        assert not scored & {"classification", "clustering"}
    else:
        assert {"classes": "classification", "clusters": "clustering"}[model.y_head] in scored
    assert ("semisup" in PLANS[variant].paper_tables) == (variant == "semi_supervised")


def test_a_variant_named_by_import_path_gets_the_default_plan() -> None:
    assert plan_for("aae.variants.unsupervised:UnsupervisedAAE") is DEFAULT_PLAN
    assert DEFAULT_PLAN.evaluations == () and DEFAULT_PLAN.paper_tables == ("parzen",)
