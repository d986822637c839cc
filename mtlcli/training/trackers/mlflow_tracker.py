"""MLflow: one MLflow run per run directory, in the tracking store of `MLFLOW_TRACKING_URI`, else a local file
store `<output.dir>/mlruns` (`mlflow ui --backend-store-uri results/mlruns`).

The MLflow run lives in the experiment `MLFLOW_EXPERIMENT_NAME`, else the dataset's name; it is named after the
run directory and tagged with its path, method, dataset and seed. Once: the resolved recipe as parameters
(flattened keys, `trackers.recipe_params`). Per epoch: every scalar of metrics.jsonl's line at step = the epoch
(`trackers.epoch_scalars`). Its status follows the training: RUNNING, then FINISHED, KILLED (stopped by a
signal) or FAILED. `RUN/mlflow.json` holds the tracking URI and the MLflow run's id, so a resumed run logs to
the same MLflow run in the same store (the epochs logged after the checkpoint it resumes from are logged again:
MLflow keeps both values at that step).

MLflow 3.x refuses its file store unless `MLFLOW_ALLOW_FILE_STORE=true` (SQLite needs SQLAlchemy, which
mlflow-skinny lacks): for its own default store, mtl sets that variable unless it is set already. Uses only
`MlflowClient` (no global active run), which mlflow-skinny has: `pip install 'mtlcli[mlflow]'`.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from mtlcli.errors import RunError
from mtlcli.io import write_json_atomic
from mtlcli.training.callbacks import Callback
from mtlcli.training.trackers import epoch_scalars, param_text, recipe_params

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from mtlcli.training.loop import Trainer

RUN_FILE = "mlflow.json"  # in the run directory: {"tracking_uri", "experiment_id", "run_id"}
URI_ENV = "MLFLOW_TRACKING_URI"
EXPERIMENT_ENV = "MLFLOW_EXPERIMENT_NAME"
ALLOW_FILE_STORE_ENV = "MLFLOW_ALLOW_FILE_STORE"
STORE = "mlruns"  # the default store, inside output.dir
BATCH = 100  # MLflow takes at most 100 parameters per log_batch call
T = TypeVar("T")


def tracking_uri(output_dir: str | Path) -> str:
    """`MLFLOW_TRACKING_URI` when set, else the file store `<output.dir>/mlruns` (as an absolute file: URI)."""
    return os.environ.get(URI_ENV) or (Path(output_dir).resolve() / STORE).as_uri()


class MlflowTracker(Callback):
    """Logs the recipe once and each epoch's record to an MLflow run (rank 0 only: see `default_callbacks`)."""

    def __init__(self) -> None:
        self.client: MlflowClient | None = None
        self.uri = ""
        self.run_id: str | None = None
        self.saved: dict[str, Any] | None = None  # a resumed run: RUN/mlflow.json
        self.ended = False

    def on_resume(self, trainer: Trainer, state: dict[str, Any]) -> None:
        assert trainer.run_dir is not None
        path = trainer.run_dir / RUN_FILE
        if not path.is_file():  # stopped before its MLflow run was made: the resumed run makes one
            return
        try:
            saved = json.loads(path.read_text())
            self.saved = {key: str(saved[key]) for key in ("tracking_uri", "experiment_id", "run_id")}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RunError(f"{path} is damaged ({type(exc).__name__}: {exc}); the MLflow run to resume is unknown") from None

    def on_train_start(self, trainer: Trainer) -> None:
        assert trainer.run_dir is not None
        recipe = trainer.recipe
        if self.saved is not None:
            self.uri, self.run_id = self.saved["tracking_uri"], self.saved["run_id"]
            self.client = self._client(self.uri)
            self._call(lambda: self._mlflow.get_run(str(self.run_id)), f"the MLflow run {self.run_id} of {trainer.run_dir}")
            self._call(lambda: self._mlflow.update_run(self.run_id, status="RUNNING"), "resuming the MLflow run")
            return
        self.uri = tracking_uri(recipe.output.dir)
        if not os.environ.get(URI_ENV):  # mtl's own default store: allow MLflow's file store (see the docstring)
            os.environ.setdefault(ALLOW_FILE_STORE_ENV, "true")
        self.client = self._client(self.uri)
        experiment_id = self._experiment(os.environ.get(EXPERIMENT_ENV) or recipe.data.name)
        tags = {"mtl.run_dir": str(trainer.run_dir.resolve()), "mtl.method": recipe.method.name,
                "mtl.dataset": recipe.data.name, "mtl.seed": str(recipe.train.seed)}  # fmt: skip
        name = trainer.run_dir.name
        run = self._call(lambda: self._mlflow.create_run(experiment_id, run_name=name, tags=tags), "creating a run")
        self.run_id = run.info.run_id
        write_json_atomic(
            trainer.run_dir / RUN_FILE, {"tracking_uri": self.uri, "experiment_id": experiment_id, "run_id": self.run_id}
        )
        self._log_params(recipe.dump())

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any], improved: bool) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, record["epoch"]) for key, value in epoch_scalars(record).items()]
        for start in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per call
            chunk = metrics[start : start + 1000]
            self._call(lambda chunk=chunk: self._mlflow.log_batch(self.run_id, metrics=chunk), f"logging epoch {record['epoch']}")

    def on_interrupt(self, trainer: Trainer) -> None:
        self._end("KILLED")

    def on_train_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        self._end("FINISHED")

    def on_exit(self, trainer: Trainer) -> None:
        if self.client is not None and self.run_id is not None and not self.ended:
            with contextlib.suppress(Exception):  # training failed: say so; its own error is the one to report
                self.client.set_terminated(self.run_id, "FAILED")
        self.client = None

    def _end(self, status: str) -> None:
        if self.client is not None and self.run_id is not None and not self.ended:
            self.ended = True
            self._call(lambda: self._mlflow.set_terminated(self.run_id, status), f"marking the MLflow run {status}")

    def _experiment(self, name: str) -> str:
        """The experiment's id, created if need be (another training may create it at the same moment)."""
        from mlflow.exceptions import MlflowException

        assert self.client is not None
        found = self._call(lambda: self._mlflow.get_experiment_by_name(name), f"finding experiment {name!r}")
        if found is not None:
            return str(found.experiment_id)
        try:
            return str(self.client.create_experiment(name))
        except MlflowException:
            found = self._call(lambda: self._mlflow.get_experiment_by_name(name), f"creating experiment {name!r}")
            if found is None:
                raise
            return str(found.experiment_id)

    def _log_params(self, recipe: dict[str, Any]) -> None:
        from mlflow.entities import Param

        params = [Param(key, param_text(value)) for key, value in recipe_params(recipe).items()]
        for start in range(0, len(params), BATCH):
            chunk = params[start : start + BATCH]
            self._call(lambda chunk=chunk: self._mlflow.log_batch(self.run_id, params=chunk), "logging the recipe")

    @property
    def _mlflow(self) -> MlflowClient:
        assert self.client is not None
        return self.client

    def _client(self, uri: str) -> MlflowClient:
        from mlflow.tracking import MlflowClient

        return self._call(lambda: MlflowClient(tracking_uri=uri), "opening the tracking store")

    def _call(self, action: Callable[[], T], doing: str) -> T:
        """`action()`, with MLflow's errors as one line naming the store and what was being done."""
        from mlflow.exceptions import MlflowException

        try:
            return action()
        except MlflowException as exc:
            lines = [line.strip() for line in str(exc.message).splitlines() if line.strip()]
            raise RunError(
                f"MLflow ({self.uri}), {doing}: {lines[0][:600] if lines else type(exc).__name__}",
                hint=f"check {URI_ENV} (or unset it for the local store in output.dir/{STORE}), "
                "or remove mlflow from output.trackers",
            ) from None
