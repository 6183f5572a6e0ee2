"""Experiment tracking behind one small interface; stages call a Tracker and never import wandb.

A tracking failure must never stop training or lose results: implementations catch their own errors,
warn once, and carry on as a NullTracker would.

How a pipeline run looks in Weights & Biases:

- The W&B *group* is the pipeline run: the run directory's name (e.g. `semisup-20250101-120000`).
- One W&B run per stage that produces something, with a fixed id `<run dir name>-<path hash>-<job type>`, so
  re-running a stage on the same run directory continues its W&B run instead of adding a duplicate:
  - job type `train`, started by Ray worker rank 0: the resolved config, one history row per epoch as it is
    reported (`train/<loss>`, `val/error` or `val/recon_bce`, `epoch`, `time/*`), the `dataset` artifact as
    an input (named after the prepared dataset, e.g. `mnist`; its manifest.json) and at the end the `model`
    artifact (checkpoints/best.pt, aliased with the group) as an output;
  - job type `evaluate`, the track stage: the config, evaluation.json's metrics as the summary, the figures
    as images (`figures/<name>`), its tables (`tables/per_class_error`), the `model` artifact as an input
    and the `evaluation` artifact (evaluation.json) as an output.
- Lineage: dataset → train run → model → evaluate run → evaluation. An input is declared with the files
  themselves (Tracker.use_artifact); W&B matches them by content digest to the version the producer logged.
  Outputs also name their inputs in their metadata (`made_from`).

Mode (`tracking.wandb`, `--wandb`): `disabled` logs nothing; `offline` writes under `<run dir>/wandb/` for a
later `wandb sync -n 1 <run dir>/wandb/offline-run-*`; `online` streams to W&B (without credentials it writes
offline instead of prompting); `auto` follows $WANDB_MODE if set, else goes online only when credentials
exist ($WANDB_API_KEY or an entry for the W&B host in ~/.netrc). Credentials are only ever read from there.

Offline lineage (wandb 0.31): `run.use_artifact` raises offline, so an input is written as the record that
online `use_artifact` writes for a new artifact (logged with `use_after_commit`); `wandb sync` replays it:
it finds the version with that content, or creates it, and marks it as the run's input. `-n 1` syncs the
runs one at a time in start order, so the train run's model exists before the evaluate run uses it.
"""

from __future__ import annotations

import contextlib
import hashlib
import netrc
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from pipeline.progress import console

if TYPE_CHECKING:
    from pipeline.config import Config
    from pipeline.rundir import RunDir

WANDB_DIR = "wandb"
DEFAULT_HOST = "https://api.wandb.ai"


class Tracker(Protocol):
    """What the pipeline logs: per-epoch metrics, a summary, images, tables and artifacts with lineage."""

    mode: str  # "online", "offline" or "disabled"
    error: str | None  # why tracking stopped early, if it did

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Stream one row of metrics (e.g. one epoch), names like `train/recon_loss`, `val/error`."""

    def log_summary(self, metrics: dict[str, float]) -> None:
        """Final numbers of the run (e.g. `test/error`)."""

    def log_images(self, images: dict[str, Path]) -> None:
        """PNG files, keyed by the name they should show under."""

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]]) -> None:
        """A small table (e.g. per-class error)."""

    def log_artifact(
        self, name: str, kind: str, paths: list[Path], uses: list[str] | None = None, metadata: dict | None = None
    ) -> None:
        """Files as a versioned artifact of type `kind`; `uses` names artifacts it was made from (lineage)."""

    def use_artifact(self, name: str, kind: str, paths: list[Path], metadata: dict | None = None) -> None:
        """Declare files (the same ones a producer logged, e.g. best.pt) as an input of this run (lineage)."""

    def finish(self) -> None:
        """Flush and close."""


class NullTracker:
    """Tracking switched off (`--wandb disabled`) or unavailable: every call does nothing."""

    mode = "disabled"
    error = None

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Do nothing."""

    def log_summary(self, metrics: dict[str, float]) -> None:
        """Do nothing."""

    def log_images(self, images: dict[str, Path]) -> None:
        """Do nothing."""

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]]) -> None:
        """Do nothing."""

    def log_artifact(
        self, name: str, kind: str, paths: list[Path], uses: list[str] | None = None, metadata: dict | None = None
    ) -> None:
        """Do nothing."""

    def use_artifact(self, name: str, kind: str, paths: list[Path], metadata: dict | None = None) -> None:
        """Do nothing."""

    def finish(self) -> None:
        """Do nothing."""


def has_wandb_credentials() -> bool:
    """True when W&B could log in without asking: $WANDB_API_KEY, or a ~/.netrc entry for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL") or DEFAULT_HOST).netloc
    path = Path(os.environ.get("NETRC") or Path.home() / ".netrc").expanduser()
    try:
        entry = netrc.netrc(path).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])


def resolve_mode(setting: str) -> str:
    """`online`, `offline` or `disabled` for a `tracking.wandb` setting; never one that would prompt for a login."""
    if setting == "auto":
        env = os.environ.get("WANDB_MODE", "").lower()
        setting = {"dryrun": "offline", "run": "online"}.get(env, env)
        if setting not in ("online", "offline", "disabled"):
            setting = "online" if has_wandb_credentials() else "offline"
    if setting == "online" and not has_wandb_credentials():
        return "offline"  # make_tracker says so; a login prompt would hang a Ray worker
    return setting


def wandb_run_id(run: RunDir, job_type: str) -> str:
    """A W&B run id fixed by the run directory and the stage, so re-running a stage continues its W&B run."""
    digest = hashlib.sha256(str(run.path).encode()).hexdigest()[:8]
    return f"{_safe(run.path.name)[:40]}-{digest}-{job_type}"  # the hash keeps two dirs with one name apart


def _safe(text: str) -> str:
    """Text usable as a W&B run id or artifact alias (those refuse / \\ # ? % : and the like)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", text)


def dataset_artifact(config: Config) -> tuple[str, Path]:
    """The dataset artifact's name (its prepared folder's name, e.g. `mnist`) and the manifest that pins it."""
    from pipeline.data import default_data_dir
    from pipeline.data.sources import parse_name

    root = Path(config.data.data_dir).expanduser() if config.data.data_dir else default_data_dir()
    folder = parse_name(config.data.dataset).dir_name
    return folder, root / folder / "manifest.json"


def make_tracker(
    config: Config, run: RunDir, job_type: str, name: str | None = None, group: str | None = None
) -> Tracker:
    """The tracker for one stage of a pipeline run: W&B in the configured mode, or a NullTracker."""
    mode = resolve_mode(config.tracking.wandb)
    if mode == "disabled":
        return NullTracker()
    if config.tracking.wandb == "online" and mode == "offline":
        console.print("W&B: no credentials ($WANDB_API_KEY or `wandb login`), so tracking writes offline instead")
    group = group or run.path.name
    return WandbTracker(
        config, run, job_type, mode, run_id=wandb_run_id(run, job_type), name=name or f"{group}-{job_type}", group=group
    )


class WandbTracker:
    """A Tracker that writes one W&B run; the first error from wandb turns it into a no-op, with one warning."""

    def __init__(
        self, config: Config, run: RunDir, job_type: str, mode: str, run_id: str, name: str, group: str
    ) -> None:
        self.mode = mode
        self.run_id = run_id
        self.error: str | None = None
        self._wandb: Any = None
        self._run: Any = None
        # wandb copies artifact files to a staging area that an offline run needs until `wandb sync`; keep it
        # in the run directory (unless the user chose one) rather than in ~/.local/share/wandb.
        self._staging = os.environ.get("WANDB_DATA_DIR") or str(run.path / WANDB_DIR / "data")
        self._guard("init", self._init, config, run, job_type, name, group)

    def _init(self, config: Config, run: RunDir, job_type: str, name: str, group: str) -> None:
        os.environ.setdefault("WANDB_SILENT", "true")  # also quiets wandb's own service process
        import wandb

        (run.path / WANDB_DIR).mkdir(parents=True, exist_ok=True)
        self._wandb = wandb
        self._run = wandb.init(
            project=config.tracking.project,
            entity=config.tracking.entity,
            group=group,
            job_type=job_type,
            name=name,
            id=self.run_id,
            resume="allow",  # the same stage on the same run directory continues its W&B run
            reinit="create_new",  # several trackers may live in one process (e.g. Tune trials)
            dir=str(run.path),
            mode=self.mode,
            config=config.model_dump(mode="json"),
            tags=[config.experiment, config.model.variant],
            settings=wandb.Settings(silent=True, console="off", save_code=False),
        )

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """One history row; a step W&B has already passed (a resumed run) is appended instead of dropped."""
        self._guard("log", self._log_row, metrics, step)

    def _log_row(self, metrics: dict[str, float], step: int | None) -> None:
        self._run.log(metrics, step=step if step is not None and step >= self._run.step else None)

    def log_summary(self, metrics: dict[str, float]) -> None:
        """Final numbers, shown in the runs table."""
        self._guard("summary", lambda: self._run.summary.update(metrics))

    def log_images(self, images: dict[str, Path]) -> None:
        """PNG files as W&B images under `figures/<name>`."""
        if images:
            self._guard("images", lambda: self._run.log(
                {f"figures/{key}": self._wandb.Image(str(path)) for key, path in images.items()}
            ))

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]]) -> None:
        """A W&B table under `tables/<name>`."""
        self._guard("table", lambda: self._run.log({f"tables/{name}": self._wandb.Table(columns=columns, data=rows)}))

    def log_artifact(
        self, name: str, kind: str, paths: list[Path], uses: list[str] | None = None, metadata: dict | None = None
    ) -> None:
        """Files as an output artifact, aliased with the group; `uses` is also kept in its metadata."""
        self._guard("log artifact", self._log_output, name, kind, paths, uses, metadata)

    def _log_output(
        self, name: str, kind: str, paths: list[Path], uses: list[str] | None, metadata: dict | None
    ) -> None:
        # The metadata keeps the intended lineage readable even where no edge exists (e.g. an untracked producer).
        artifact = self._artifact(name, kind, paths, {**(metadata or {}), **({"made_from": uses} if uses else {})})
        # The group alias finds "the model of pipeline run X" among the versions of every run.
        self._run.log_artifact(artifact, aliases=["latest", *([_safe(self._run.group)] if self._run.group else [])])

    def use_artifact(self, name: str, kind: str, paths: list[Path], metadata: dict | None = None) -> None:
        """Files as an input artifact: W&B matches them by content to the version a producer logged."""
        self._guard("use artifact", self._use_input, name, kind, paths, metadata)

    def _use_input(self, name: str, kind: str, paths: list[Path], metadata: dict | None) -> None:
        artifact = self._artifact(name, kind, paths, metadata or {})
        if self.mode == "online":
            self._run.use_artifact(artifact)
            return
        # wandb 0.31 refuses use_artifact offline. Online, using a new artifact logs it with use_after_commit;
        # that record can be written offline too, and `wandb sync` then finds (by content digest) or creates
        # the version and marks it as this run's input, exactly as online would.
        self._run._log_artifact(artifact, is_user_created=True, use_after_commit=True)

    def _artifact(self, name: str, kind: str, paths: list[Path], metadata: dict) -> Any:
        artifact = self._wandb.Artifact(name, type=kind, metadata=metadata)
        for path in paths:
            artifact.add_file(str(path))
        return artifact

    def finish(self) -> None:
        """Flush and close the W&B run."""
        run, self._run = self._run, None
        if run is not None:
            try:
                with _environment(WANDB_DATA_DIR=self._staging):
                    run.finish()
            except Exception as err:  # a tracking failure must not fail the stage
                self._warn_once("finish", err)

    def _guard(self, what: str, fn: Callable[..., Any], *args: Any) -> None:
        """Call into wandb; on the first error warn once, close the run if possible, and do nothing after."""
        if self.error is not None or (self._run is None and what != "init"):
            return
        try:
            with _environment(WANDB_DATA_DIR=self._staging):
                fn(*args)
        except Exception as err:  # a tracking failure must not fail the stage
            self._warn_once(what, err)
            run, self._run = self._run, None
            with contextlib.suppress(Exception):  # already warned: wandb itself is failing
                if run is not None:
                    run.finish(exit_code=1)

    def _warn_once(self, what: str, err: BaseException) -> None:
        if self.error is None:
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
            self.error = f"{what}: {type(err).__name__} {first_line}"[:300]
            console.print(f"warning: W&B tracking stopped ({self.error}); training and results are unaffected")


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    """Set environment variables for the duration of a block (wandb reads some settings only from there)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
