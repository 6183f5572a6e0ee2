"""The variant plans: one stated row per registered variant, names that exist, plans that agree with what each
model says of itself, and a class's plan whatever name it is given."""

from __future__ import annotations

import pytest

from aae.variants import VARIANTS, build_model
from pipeline.plans import DEFAULT_PLAN, STATED, HeadPlan, head_plan, plan_for
from pipeline.report import PAPER_TABLES
from pipeline.search_space import SEARCH_DIR
from pipeline.stages.evaluate import EVALUATIONS
from pipeline.stages.visualize import FIGURES


def test_the_stated_table_and_the_model_registry_name_the_same_variants() -> None:
    assert set(STATED) == set(VARIANTS)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_name_a_plan_gives_exists_where_it_is_defined(variant: str) -> None:
    plan = plan_for(variant)
    assert set(plan.evaluations) <= set(EVALUATIONS)
    assert set(plan.figures) <= set(FIGURES)
    assert set(plan.paper_tables) <= {table.name for table in PAPER_TABLES}
    assert plan.search_space is None or (SEARCH_DIR / f"{plan.search_space}.yaml").is_file()
    # Each name once: a stated row must not repeat what the head already brings.
    for names in (plan.evaluations, plan.figures, plan.paper_tables):
        assert len(set(names)) == len(names)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_each_plan_scores_the_head_the_model_has(variant: str) -> None:
    model = build_model(variant, {"hidden": (8,), **({} if variant == "vae" else {"disc_hidden": (8,)})})
    plan = plan_for(variant)
    scored = set(plan.evaluations)
    assert ("semisup" in plan.paper_tables) == (variant == "semi_supervised")
    fixed = VARIANTS[variant].y_head  # the head the class states; a property where the config decides it
    if isinstance(fixed, property):  # dim_reduction: scores its head as classes or clusters, whichever it trains
        assert variant == "dim_reduction" and scored == {"dim_reduction"}
        assert model.y_head == "classes" and head_plan(VARIANTS[variant]) == HeadPlan()  # nothing by head
        return
    assert fixed == model.y_head
    if model.y_head is None:
        assert not scored & {"classification", "clustering"}
    else:
        assert {"classes": "classification", "clusters": "clustering"}[model.y_head] in scored


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_a_built_in_named_by_import_path_gets_its_own_plan(variant: str) -> None:
    cls = VARIANTS[variant]
    assert plan_for(f"{cls.__module__}:{cls.__name__}") == plan_for(variant)


def test_a_model_without_a_head_or_a_row_gets_the_default_plan() -> None:
    assert plan_for("tests.pipeline.test_add_variant:ToyAAE") == DEFAULT_PLAN
    assert DEFAULT_PLAN.evaluations == () and DEFAULT_PLAN.paper_tables == ("parzen",)
    with pytest.raises(ValueError, match="unknown variant"):
        plan_for("no_such_variant")
