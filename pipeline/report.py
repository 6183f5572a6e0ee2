"""`aae-pipeline report`: the paper's tables, with the paper's numbers beside the numbers of these runs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import Config, load_config
from pipeline.errors import UserError, command
from pipeline.plans import plan_for
from pipeline.rundir import CONFIG_FILE, RunDir
from pipeline.stages import EVALUATION_FILE
from pipeline.stages.evaluate import read_evaluation
from pipeline.tables import FORMATS, Column, TextTable, render


@dataclass(frozen=True)
class PaperTable:
    """One table of the paper: its reference numbers per setting, and where a run of ours belongs in it."""

    name: str  # what a variant's plan (pipeline.plans) calls it
    title: str
    metric: str  # the evaluation.json metric compared with the paper's column
    methods: tuple[str, ...]  # reference columns, in the paper's order
    paper: dict[str, tuple[str, ...]]  # setting (row) -> one number per method ("—": not reported)
    setting: Callable[[Config], str | None]  # the row a run of a variant planned for it belongs in; None: none
    extra: tuple[str, ...] = ()  # further metrics of ours shown beside the main one


def is_svhn(dataset: str) -> bool:
    """Whether a dataset name is SVHN, downloaded ('svhn') or from the user's .mat files ('svhn:/dir')."""
    return dataset.lower() == "svhn" or dataset.lower().startswith("svhn:")


def _semisup_setting(config: Config) -> str:
    return f"SVHN, {config.data.labels} labels" if is_svhn(config.data.dataset) else f"{config.data.labels} labels"


def _cluster_setting(config: Config) -> str:
    return f"{config.model.resolved().n_clusters} clusters"


def _dimred_setting(config: Config) -> str:
    model = config.model.resolved()
    if model.use_labels:
        return f"{model.z_dim}-D, {config.data.labels} labels"
    return f"{model.z_dim}-D, {model.n_clusters} clusters, no labels"


def _parzen_setting(config: Config) -> str:
    dataset = "MNIST" if config.data.dataset == "mnist" else "SVHN" if is_svhn(config.data.dataset) else \
        config.data.dataset
    return f"{dataset}, {config.model.variant}"


# The paper's numbers (arXiv:1511.05644, Tables 1-3 and §7), in one place.
PAPER_TABLES: tuple[PaperTable, ...] = (
    PaperTable(
        "semisup",
        "Semi-supervised classification, MNIST and SVHN (test error %)", "test/error",
        ("NN baseline", "VAE M1+M2", "ADGM", "AAE (paper)"),
        {"100 labels": ("25.80", "3.33 ± 0.14", "0.96 ± 0.02", "1.90 ± 0.10"),
         "1000 labels": ("8.73", "2.40 ± 0.02", "—", "1.60 ± 0.08"),
         "all labels": ("1.25", "0.96", "—", "0.85 ± 0.02"),
         "SVHN, 1000 labels": ("47.50", "36.02 ± 0.10", "16.61 ± 0.24", "17.70 ± 0.30")},
        _semisup_setting),
    PaperTable(
        "clustering",
        "Unsupervised clustering, MNIST (test error %, the paper's cluster rule)",
        "test/cluster_error", ("CatGAN", "AAE (paper)"),
        {"16 clusters": ("—", "9.55"), "20 clusters": ("4.27", "—"), "30 clusters": ("—", "4.10")},
        _cluster_setting, extra=("test/cluster_error_majority", "test/nmi", "test/ari")),
    PaperTable(
        "dimred",
        "Dimensionality reduction, MNIST (test error %)", "test/dimred_error", ("AAE (paper)",),
        {"2-D, 1000 labels": ("4.20",), "2-D, 100 labels": ("6.08",),
         "2-D, 20 clusters, no labels": ("13.95",), "10-D, 100 labels": ("3.90",)},
        _dimred_setting),
    PaperTable(
        "parzen",
        "Parzen log-likelihood of the MNIST test set (nats, higher is better)",
        "test/parzen_ll", ("GAN", "GMMN+AE", "AAE (paper)"),
        {"MNIST, unsupervised": ("225 ± 2", "282 ± 2", "340 ± 2")},
        _parzen_setting, extra=("test/parzen_sigma",)),
)


@dataclass
class RunResult:
    """What the report shows of one run."""

    name: str
    config: Config
    metrics: dict[str, Any]
    epochs: str  # epochs trained, and the epoch of the evaluated (best) checkpoint


def read_run_result(path: Path) -> RunResult:
    """A run directory's config and evaluation; a path that is neither is a UserError that says what to do."""
    if not (path / CONFIG_FILE).is_file():
        raise UserError(f"{path} is not a run directory (no {CONFIG_FILE})",
                        "pass a directory made by `aae-pipeline run`")
    run = RunDir(path)
    evaluation = read_evaluation(run)
    if evaluation is None:
        raise UserError(f"{path} has not been evaluated (no {EVALUATION_FILE})",
                        f"run `{command('aae-pipeline eval', path)}`")
    trained = len(run.read_metrics())
    best = evaluation.get("checkpoint", {}).get("epoch")
    epochs = f"{trained} (best {best})" if best is not None else str(trained)
    return RunResult(run.path.name, load_config(str(path / CONFIG_FILE)), evaluation["metrics"], epochs)


def beside_the_paper(config: Config, metrics: dict[str, Any]) -> list[tuple[str, str, float | None, str]]:
    """For each paper table a run of this config belongs in: (the table's title, its metric, the run's number,
    the paper's AAE number for the run's setting, "—" where the paper reports none)."""
    rows = []
    for table in PAPER_TABLES:
        setting = table.setting(config) if table.name in plan_for(config.model.variant).paper_tables else None
        if setting is not None:
            paper = table.paper.get(setting, ("—",) * len(table.methods))[-1]  # the AAE column comes last
            rows.append((f"{table.title.split(' (')[0]}, {setting}", table.metric, metrics.get(table.metric), paper))
    return rows


def paper_table(table: PaperTable, runs: list[RunResult]) -> TextTable:
    """One paper table: a row per setting with the paper's numbers, our runs in the rows of their settings. The
    paper's AAE number and ours (the table's metric) come first; the other methods' numbers and our further
    metrics are optional columns, which a narrow terminal leaves out."""
    aae, others = table.methods[-1], table.methods[:-1]  # the AAE column comes last in the paper's order
    columns = [Column("setting"), Column(f"paper {_short(aae)}", right=True),
               Column("ours", right=True), Column("epochs", right=True),
               Column("run"), *(Column(_short(m), right=True, optional=True) for m in others),
               *(Column(m.removeprefix("test/"), right=True, optional=True) for m in table.extra)]
    out = TextTable(table.title, columns)
    placed = [(table.setting(run.config), run) for run in runs
              if table.metric in run.metrics and table.name in plan_for(run.config.model.variant).paper_tables]
    placed = [(setting, run) for setting, run in placed if setting is not None]
    settings = list(table.paper) + sorted({s for s, _ in placed} - set(table.paper))
    for setting in settings:
        reference = table.paper.get(setting, ("—",) * len(table.methods))
        ours = [run for s, run in placed if s == setting]
        for index, run in enumerate(ours or [None]):
            first = index == 0
            cells = [setting if first else "", reference[-1] if first else ""]
            if run is None:
                cells += ["—", "", "—"]
            else:
                cells += [_number(run.metrics.get(table.metric)), run.epochs, run.name]
            cells += [value if first else "" for value in reference[:-1]]
            cells += [_number(run.metrics.get(key)) if run else "" for key in table.extra]
            out.rows.append(cells)
    return out


def _short(method: str) -> str:
    """A method's column header without the "(paper)" the AAE's carries."""
    return method.removesuffix(" (paper)")


def _number(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.3f}" if abs(value) < 1 else f"{value:.2f}"


def print_report(run_dirs: list[Path], fmt: str = "table") -> None:
    """Print each of the paper's tables with these runs' numbers placed in the rows their configs belong to, as
    an aligned table that fits the terminal, or as Markdown, CSV or JSON."""
    if fmt not in FORMATS:
        raise UserError(f"unknown --format {fmt!r}", f"choose one of: {', '.join(FORMATS)}")
    runs = [read_run_result(Path(path)) for path in run_dirs]
    print(render([paper_table(table, runs) for table in PAPER_TABLES], fmt), end="")
