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

The driver settles the mode once, before any stage (settle_tracking): an online mode whose host does not
answer within a few seconds becomes offline, with one warning, and that config is what every stage and Ray
worker gets, so none waits on the network (wandb's own init waits 90 s per run). Ray workers' output never
reaches the user's terminal, so a tracker that fails there also leaves its error in `<run dir>/wandb/
<job type>-error.txt`, for the driver to report (recorded_errors).

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
import shlex
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pipeline.progress import console

if TYPE_CHECKING:
    from pipeline.config import Config
    from pipeline.rundir import RunDir

WANDB_DIR = "wandb"
DEFAULT_HOST = "https://api.wandb.ai"
ERROR_SUFFIX = "-error.txt"  # <run dir>/wandb/<job type>-error.txt: a tracker's error, for the driver to report
PROBE_SECONDS = 5.0  # how long the driver waits for the W&B host before tracking offline instead
INIT_SECONDS = 20.0  # wandb.init's own limit online (its default, 90 s, is paid by every failing run)


class Tracker:
    """What the pipeline logs: per-epoch metrics, a summary, images, tables and artifacts with lineage.

    The interface, whose every call does nothing here: an implementation (WandbTracker) subclasses it and
    overrides each call with the same signature, and NullTracker is it as it stands.
    """

    mode: str  # "online", "offline" or "disabled"
    error: str | None = None  # why tracking stopped early, if it did

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


class NullTracker(Tracker):
    """Tracking switched off (`--wandb disabled`) or unavailable: every call does nothing."""

    mode = "disabled"


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


def settle_tracking(config: Config, *run_dirs: Path | str) -> Config:
    """The config the driver hands every stage: an unreachable W&B host turns online into offline, with one warning."""
    # Called once per run or sweep, before any stage; `run_dirs` are where the offline runs will be (for the hint).
    mode = resolve_mode(config.tracking.wandb)
    if config.tracking.wandb == "online" and mode == "offline":
        console.print("W&B: no credentials ($WANDB_API_KEY or `wandb login`), so tracking writes offline instead")
    if mode != "online":
        return config
    url = os.environ.get("WANDB_BASE_URL") or DEFAULT_HOST
    problem = host_problem(url)
    if problem is None:
        return config
    console.print(
        f"W&B: {urlsplit(url).netloc or url} unreachable ({problem}); tracking offline instead; "
        f"upload later with: {sync_command(*run_dirs)}"
    )
    return config.model_copy(update={"tracking": config.tracking.model_copy(update={"wandb": "offline"})})


def host_problem(url: str, timeout: float = PROBE_SECONDS) -> str | None:
    """Why `url` gives no HTTP answer within `timeout` seconds, or None when it answers (any status below 500)."""
    outcome: list[str | None] = []

    def probe() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
            outcome.append(None)
        except urllib.error.HTTPError as err:  # the host answered; a 5xx is a proxy or an outage
            outcome.append(None if err.code < 500 else f"HTTP {err.code}")
        except (OSError, ValueError) as err:  # URLError is an OSError
            reason = getattr(err, "reason", err)
            outcome.append(getattr(reason, "strerror", None) or str(reason) or type(err).__name__)

    # A thread, because name resolution ignores socket timeouts: a dead DNS must not hold the run up.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else f"no answer in {timeout:g}s"


def sync_command(*run_dirs: Path | str) -> str:
    """The `wandb sync` line that uploads the offline runs under these run directories, ready to paste into a
    shell: each directory quoted (`trials/*` in a sweep's stays a glob), the offline-run-* glob left to expand."""
    quoted = [shlex.quote(str(path)) if "*" not in str(path) else _quote_all_but_glob(str(path)) for path in run_dirs]
    return "wandb sync -n 1 " + " ".join(f"{path}/{WANDB_DIR}/offline-run-*" for path in quoted)  # -n 1: in order


def _quote_all_but_glob(path: str) -> str:
    """A path with `*` parts, quoted around them so that the shell still expands them."""
    return "*".join(shlex.quote(part) if part else "" for part in path.split("*"))


def recorded_errors(run_dir: Path) -> dict[str, str]:
    """Errors the trackers of a run directory left, by job type (a Ray worker's own warning is never seen)."""
    return {
        path.name.removesuffix(ERROR_SUFFIX): path.read_text().strip()
        for path in sorted((run_dir / WANDB_DIR).glob(f"*{ERROR_SUFFIX}"))
    }


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
    mode = resolve_mode(config.tracking.wandb)  # settle_tracking has told the user about a fallback to offline
    if mode == "disabled":
        return NullTracker()
    group = group or run.path.name
    return WandbTracker(
        config, run, job_type, mode, run_id=wandb_run_id(run, job_type), name=name or f"{group}-{job_type}", group=group
    )


class WandbTracker(Tracker):
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
        # Where this run's error goes for the driver to report; a new attempt starts without the old one's.
        self._error_file = run.path / WANDB_DIR / f"{job_type}{ERROR_SUFFIX}"
        with contextlib.suppress(OSError):
            self._error_file.unlink(missing_ok=True)
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
            settings=wandb.Settings(silent=True, console="off", save_code=False, **_init_timeout()),
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
        # An input is the producer's version, matched by content: no second staged copy of its files (a model's
        # checkpoint is the largest file a run has).
        artifact = self._artifact(name, kind, paths, metadata or {}, policy="immutable")
        if self.mode == "online":
            self._run.use_artifact(artifact)
            return
        # wandb 0.31 refuses use_artifact offline. Online, using a new artifact logs it with use_after_commit;
        # that record can be written offline too, and `wandb sync` then finds (by content digest) or creates
        # the version and marks it as this run's input, exactly as online would.
        self._run._log_artifact(artifact, is_user_created=True, use_after_commit=True)

    def _artifact(self, name: str, kind: str, paths: list[Path], metadata: dict, policy: str = "mutable") -> Any:
        artifact = self._wandb.Artifact(name, type=kind, metadata=metadata)
        for path in paths:
            artifact.add_file(str(path), policy=policy)
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
            with contextlib.suppress(OSError):  # reporting the error must not become an error itself
                self._error_file.parent.mkdir(parents=True, exist_ok=True)
                self._error_file.write_text(self.error + "\n")


def _init_timeout() -> dict[str, float]:
    """wandb.init's time limit online: short, unless the user set $WANDB_INIT_TIMEOUT (an explicit one wins)."""
    return {} if os.environ.get("WANDB_INIT_TIMEOUT") else {"init_timeout": INIT_SECONDS}


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
