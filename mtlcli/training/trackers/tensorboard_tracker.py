"""TensorBoard: event files in the run directory's `tensorboard/` (`tensorboard --logdir results/`).

Per epoch, every scalar of metrics.jsonl's line at step = the epoch (`trackers.epoch_scalars`). Once per run
(step 0): the resolved recipe as text (the `recipe` tag, YAML) and as hyperparameters (the HParams dashboard,
flattened keys, `val_score` as its metric). A resumed run appends a new event file to the same directory,
written with `purge_step` = the first epoch it trains again, so TensorBoard drops what the first session
logged after the checkpoint it resumes from.

Written with torch's `SummaryWriter` (it needs the `tensorboard` package: `pip install 'mtlcli[tensorboard]'`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import yaml

from mtlcli.training.callbacks import Callback
from mtlcli.training.trackers import epoch_scalars, recipe_params

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

    from mtlcli.training.loop import Trainer

DIRECTORY = "tensorboard"  # inside the run directory
RECIPE_TAG = "recipe"
HPARAMS_METRIC = "val_score"  # the selection score: what the HParams dashboard compares runs by


class TensorBoardTracker(Callback):
    """Logs each epoch's record to `RUN/tensorboard/` (rank 0 only: see `default_callbacks`)."""

    def __init__(self) -> None:
        self.writer: SummaryWriter | None = None
        self.purge_step: int | None = None  # a resumed run: the first epoch logged again

    def on_resume(self, trainer: Trainer, state: dict[str, Any]) -> None:
        self.purge_step = trainer.position.epoch

    def on_train_start(self, trainer: Trainer) -> None:
        from torch.utils.tensorboard import SummaryWriter

        assert trainer.run_dir is not None
        directory = trainer.run_dir / DIRECTORY
        new = not any(directory.glob("events.out.tfevents.*"))
        self.writer = SummaryWriter(str(directory), purge_step=None if new else self.purge_step)
        if new:
            self._log_recipe(trainer.recipe.dump())
            self.writer.flush()

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any], improved: bool) -> None:
        assert self.writer is not None
        for tag, value in epoch_scalars(record).items():
            self.writer.add_scalar(tag, value, record["epoch"])
        self.writer.flush()

    def on_exit(self, trainer: Trainer) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def _log_recipe(self, recipe: dict[str, Any]) -> None:
        from torch.utils.tensorboard.summary import hparams

        assert self.writer is not None
        text = yaml.safe_dump(recipe, sort_keys=False)
        self.writer.add_text(RECIPE_TAG, "".join(f"    {line}\n" for line in text.splitlines()), 0)  # a markdown code block
        values = {key: _hparam(value) for key, value in recipe_params(recipe).items()}
        for summary in hparams(values, {HPARAMS_METRIC: 0.0}):  # experiment, session start, session end
            self.writer.file_writer.add_summary(summary)


def _hparam(value: Any) -> bool | int | float | str:
    """What the HParams plugin takes: a number, a bool or a string (null as `null`)."""
    if isinstance(value, bool | int | float | str):
        return value
    return "null" if value is None else str(value)
