"""The training loop and what it returns: :func:`step_loop`, a :class:`History` of records, the
:class:`TimeBudget` that fits a run's length to a wall-clock budget, and :func:`ema_model`, an
exponential moving average of a model's weights.

Every task trains through the same call shape, ``train_x(model, train_data, val_data=None, ...)``
returning a :class:`History` (the model is trained in place): the detector
(:func:`smearlab.detection.train.train_detector`), the U-Net
(:func:`smearlab.segmentation.train.train_unet`), the learned instance segmenter
(:func:`smearlab.segmentation.instances.train_instance_unet`) and the classifier, plain or
domain-adversarial (:func:`smearlab.classification.train.train_classifier`, ``train_dann``).
All of them run :func:`step_loop`, so that what differs between them is the model, its loss and
what happens at a record (validation, checkpoints): the detector's distributed training,
checkpoints and resume live in the ``step`` and the hooks it gives the loop. A history is a sequence of records (``history[-1]["loss"]``), one per epoch or
evaluation, and knows its best record and the run folder it was saved in.
"""
from __future__ import annotations

import json
import math
import numbers
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from tqdm.auto import tqdm

from .errors import DataError


def check_count(name: str, value) -> None:
    """``value`` is a whole number of at least 1 (``batch_size``, ``epochs``, ``steps`` ...);
    ValueError naming ``name`` otherwise (a bool, a fraction or 0 read as a count gave bare
    numpy, ``range`` or division errors, or no result at all).

    Parameters
    ----------
    name : the argument's name, for the message.
    value : what was given.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a whole number of at least 1, got {value!r}")

def ema_model(model, decay: float):
    """An exponential moving average of ``model``'s weights and buffers (batch-norm statistics
    included): ``torch.optim.swa_utils.AveragedModel``, updated by ``ema.update_parameters(model)``
    after each optimiser step, its copy of the model in ``ema.module``.

    The weight of the running average at update ``n`` is ``min(decay, (1 + n) / (10 + n))``, so
    the first updates follow the model closely instead of holding on to the random
    initialisation (the warm-up of TensorFlow's ``ExponentialMovingAverage``). Integer buffers
    (batch-norm step counters) are copied.
    """
    import torch
    from torch.optim.swa_utils import AveragedModel

    decay = float(decay)
    if not 0.0 < decay < 1.0:
        raise ValueError(f"the EMA decay must lie between 0 and 1 (exclusive), got {decay!r}")

    def update(averaged: list, current: list, n) -> None:
        d = min(decay, (1.0 + float(n)) / (10.0 + float(n)))
        if averaged and (torch.is_floating_point(averaged[0]) or torch.is_complex(averaged[0])):
            torch._foreach_lerp_(averaged, current, 1.0 - d)
        else:
            for a, c in zip(averaged, current):
                a.copy_(c)

    return AveragedModel(model, multi_avg_fn=update, use_buffers=True)


#: The clock of :class:`TimeBudget` (tests replace it).
clock = time.monotonic


@dataclass
class History:
    """What a training run did: one record per epoch (or evaluation), every step's loss, the best.

    Parameters
    ----------
    records : one dict per epoch or evaluation (``loss``, validation scores, learning rate ...).
    step_losses : the training loss of every optimisation step, where the loop keeps them.
    best_epoch, best_value, best_metric : the record with the best ``best_metric``.
    out_dir : the run folder, when the run wrote one.
    """

    records: list[dict[str, Any]] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)
    best_epoch: int | None = None
    best_value: float | None = None
    best_metric: str = "loss"
    out_dir: Path | None = None
    _best_key: str | None = field(default=None, repr=False)  # the record key the best was read from

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i):
        return self.records[i]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.records)

    def append(self, record: dict[str, Any]) -> None:
        """Add one record.

        Parameters
        ----------
        record : the record of one epoch or evaluation (``loss``, validation scores ...).
        """
        self.records.append(record)

    def column(self, key: str) -> list:
        """One metric over the records (None where missing).

        Parameters
        ----------
        key : the metric's name in the records.
        """
        return [r.get(key) for r in self.records]

    @property
    def last(self) -> dict[str, Any] | None:
        """The last record, or None before the first."""
        return self.records[-1] if self.records else None

    def note_best(self, record: dict[str, Any]) -> bool:
        """Whether ``record`` is the best validated so far by ``val_<best_metric>`` (``val_mAP50``
        where the detection records hold only that, never one against the other); the best is
        updated when it is. Higher is better, lower for a loss or an error (a name holding
        ``loss`` or ``error``). The first of equal values stays the best.

        Parameters
        ----------
        record : one epoch's record.
        """
        key = f"val_{self.best_metric}"
        if key not in record and "val_mAP50" in record and self._best_key in (None, "val_mAP50"):
            key = "val_mAP50"  # (a best by mAP is not beaten by another epoch's mAP50)
        value = record.get(key)
        if value is None or not math.isfinite(float(value)):
            return False
        first = self.best_value is None or (self._best_key == "val_mAP50" and key != "val_mAP50")  # the real
        if self._best_key not in (None, key) and not first:  # metric replaces a best read from the fallback
            return False
        lower = "loss" in key or "error" in key
        if first or (value < self.best_value if lower else value > self.best_value):
            self.best_epoch, self.best_value, self._best_key = record.get("epoch"), value, key
            return True
        return False

    def to_dataframe(self):
        """The records as a pandas DataFrame (pandas is not a dependency: install it to use this)."""
        import pandas as pd
        return pd.DataFrame(self.records)

    def to_state(self) -> dict[str, Any]:
        """A JSON-ready dict of the whole history."""
        return {"records": self.records, "step_losses": list(self.step_losses), "best_epoch": self.best_epoch,
                "best_value": self.best_value, "best_metric": self.best_metric, "best_key": self._best_key}

    @classmethod
    def load(cls, out_dir, best_metric: str | None = None) -> "History":
        """The history of a run folder, from its ``metrics.jsonl``, with its best epoch found again.

        Parameters
        ----------
        out_dir : the run folder.
        best_metric : the validation metric that picks the best epoch (default: the one the run's
            saved ``train_config.json`` names; without one, no best epoch is set).
        """
        p = Path(out_dir) / "metrics.jsonl"
        if not p.is_file():
            raise DataError(p, "no metrics.jsonl in this run folder")
        recs = [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
        metric = best_metric
        if metric is None:  # the metric the run picked its best model by, where it saved one
            for folder in ("best", "model"):
                cfg = Path(out_dir) / folder / "train_config.json"
                if cfg.is_file():
                    metric = json.loads(cfg.read_text(encoding="utf-8")).get("best_metric")
                    if metric:
                        break
        hist = cls(records=recs, out_dir=Path(out_dir), best_metric=metric or "loss")
        if metric:  # without the run's metric no record is called the best
            for rec in recs:
                hist.note_best(rec)
        return hist


class TimeBudget:
    """The number of epochs (and so the length of the learning-rate schedule) fitted to a
    wall-clock budget, from the measured speed of the run itself.

    After ``calibration_steps`` optimisation steps the time per step is measured (the first step,
    which warms caches up, left out) and the plan is the number of whole epochs that fit in the
    budget; a budget that cannot hold one epoch is an error then, not after wasting it. After each
    epoch (validation included) the plan is fitted again to the measured epoch time
    (:meth:`epoch_estimate_s`, which leaves the warm-up epoch out): freely in the first third of
    the budget's time, afterwards only downwards, so that a slower machine shortens the run but a
    noisy measurement never makes the schedule jump up late. The schedule always spans the
    planned epochs, so the run ends on a finished schedule: a run that runs out of time before
    its plan ends is given one more epoch to finish it (past the budget by at most that epoch).
    A resumed run goes on with the budget and plan of its checkpoint (:meth:`state`, :meth:`resume`).

    Parameters
    ----------
    seconds : the budget for training and its validation.
    steps_per_epoch : optimisation steps in one epoch.
    initial_epochs : the plan before the first measurement (the schedule's warm-up uses it).
    calibration_steps : steps measured before the first plan (at most one epoch).
    clock : seconds since an arbitrary origin (default: the module's :data:`clock`,
        ``time.monotonic``).
    share : ``f(plan) -> plan``, applied to every new plan so that several processes follow one
        (distributed training: rank 0's, broadcast); None for one process.
    window : the recent epochs whose mean guards the estimate against a slowdown: 1 reacts to
        the last epoch alone; give the validation period (``TrainConfig.val_every``) when
        validation runs every few epochs, so that its epochs average out.
    """

    def __init__(self, seconds: float, steps_per_epoch: int, *, initial_epochs: int = 12,
                 calibration_steps: int = 6, clock=None, share=None, window: int = 1):
        if not seconds > 0:
            raise ValueError(f"time_budget_s must be a positive number of seconds, got {seconds!r}")
        self.seconds = float(seconds)
        self.steps_per_epoch = max(1, int(steps_per_epoch))
        self.planned_epochs = max(1, int(initial_epochs))
        self.calibration_steps = max(2, min(int(calibration_steps), self.steps_per_epoch))
        self.clock = clock or globals()["clock"]
        self.share = share or (lambda plan: plan)
        self.window = max(1, int(window))
        self.t0: float | None = None
        self.t_first: float | None = None
        self.step_s: float | None = None
        self.epoch_s: list[float] = []
        self.calibrated = False
        self._epoch_start: float | None = None
        self.spent_s = 0.0  # seconds spent by the run before a resume
        self.warm_up = [0]  # the epochs (indices into epoch_s) that carried a warm-up: a run's first

    def state(self, epochs_before: int = 0) -> dict[str, Any]:
        """What a checkpoint keeps of the budget, for :meth:`resume`: the seconds spent, the plan of
        the whole run and the epoch times measured.

        Parameters
        ----------
        epochs_before : epochs done before this run (a resumed run's start).
        """
        return {"spent_s": self.elapsed_s, "planned_epochs": int(epochs_before) + self.planned_epochs,
                "epoch_s": list(self.epoch_s), "warm_up": list(self.warm_up)}

    def resume(self, state: Mapping[str, Any], epochs_done: int) -> None:
        """Go on with a run stopped part-way (a checkpoint's :meth:`state`): the seconds it spent
        count against the budget and its plan stands (a fresh budget trained a whole budget more
        and raised the learning rate again; a finished run trained again).

        Parameters
        ----------
        state : the budget's :meth:`state` from the checkpoint.
        epochs_done : epochs the checkpoint holds.
        """
        self.spent_s = float(state["spent_s"])
        self.planned_epochs = max(0, int(state["planned_epochs"]) - int(epochs_done))
        self.epoch_s = [float(v) for v in state.get("epoch_s", [])]
        # the resumed run's first epoch warms up again (left out of the estimate, as a run's first is)
        self.warm_up = [int(i) for i in state.get("warm_up", [0])] + [len(self.epoch_s)]
        self.calibrated = True

    def start(self) -> None:
        """Start the clock (just before the first training step; the first :meth:`after_step`
        starts it when nobody did)."""
        self.t0 = self._epoch_start = self.clock()

    @property
    def elapsed_s(self) -> float:
        """Seconds since :meth:`start` (and those spent before a :meth:`resume`)."""
        return self.spent_s + (0.0 if self.t0 is None else self.clock() - self.t0)

    @property
    def left_s(self) -> float:
        """Seconds of the budget left (negative when over)."""
        return self.seconds - self.elapsed_s

    def after_step(self, steps_done: int) -> None:
        """Call after every optimisation step of the first epoch; plans after the calibration steps.

        Parameters
        ----------
        steps_done : optimisation steps done so far in this run.

        Raises
        ------
        ValueError
            when the measured speed leaves no room for one whole epoch.
        """
        if self.calibrated:
            return
        if self.t0 is None:
            self.start()
        if steps_done == 1:
            self.t_first = self.clock()
        if steps_done < self.calibration_steps:
            return
        self.step_s = (self.clock() - self.t_first) / max(1, steps_done - 1)
        epoch_s = self.step_s * self.steps_per_epoch
        fit = int(self.share(int(self.seconds // epoch_s)))
        if fit < 1:
            raise ValueError(f"a time budget of {self.seconds:.3g} s is too small for one epoch: one epoch is "
                             f"{self.steps_per_epoch} steps of {self.step_s:.2f} s (about {epoch_s:.3g} s) on this "
                             f"machine; give a larger time_budget_s, fewer or smaller images, or epochs instead")
        self.planned_epochs = fit
        self.calibrated = True

    def after_epoch(self, epochs_done: int) -> int:
        """Fit the plan to the epochs measured so far (validation included); returns the planned
        number of epochs.

        Parameters
        ----------
        epochs_done : epochs finished in this run.
        """
        now = self.clock()
        if self.t0 is None:
            self.t0 = self._epoch_start = now
        self.epoch_s.append(now - self._epoch_start)
        self._epoch_start = now
        affordable = epochs_done + max(0, int(self.left_s // self.epoch_estimate_s()))
        # a run the budget cuts short before its plan ends finishes its schedule in one more epoch
        # (over the budget by at most that epoch): stopped where it stood, the learning rate was
        # left at 69 % of its peak and the model never annealed
        least = epochs_done + 1 if epochs_done < self.planned_epochs else epochs_done
        # the plan may rise in the first third of the budget, and once more at the second epoch:
        # the first estimate without the warm-up epoch (a warm-up over a third of the budget held
        # the plan at what that slow epoch allowed: 2 epochs in 22 s of a 50 s budget)
        if self.elapsed_s <= self.seconds / 3 or len(self.epoch_s) == 2:
            plan = max(least, affordable)
        else:
            plan = max(least, min(self.planned_epochs, affordable))
        self.planned_epochs = int(self.share(plan))
        return self.planned_epochs

    def epoch_estimate_s(self) -> float:
        """Seconds an epoch will take: the mean of the epochs measured, the first left out once
        there are others (it carries the warm-up: on a GPU, kernel selection made it ten times
        slower than the rest; so does the first epoch after a resume), or the mean of the last
        :attr:`window` when they were slower (the machine got busier).
        """
        times = [t for i, t in enumerate(self.epoch_s) if i not in self.warm_up] or self.epoch_s
        recent = times[-self.window:]
        return max(sum(times) / len(times), sum(recent) / len(recent))

    def describe(self) -> str:
        """The budget as one line for a progress bar: time left and the plan."""
        return f"{max(0.0, self.left_s) / 60:.1f} min left, {self.planned_epochs} epochs planned"


def step_loop(step, total_steps: int, *, record_every: int, optimizer=None, lr_at=None, on_record=None,
              after_record=None, budget: TimeBudget | None = None, start_step: int = 0,
              stop_step: int | None = None, progress: bool = False, desc: str = "train",
              history: History | None = None) -> History:
    """The training loop every task shares: ``total_steps`` calls of ``step``, a record every
    ``record_every`` steps.

    What differs between tasks lives in ``step`` (draw a batch, compute the model's loss,
    take the optimiser step), ``on_record`` (validation) and ``after_record`` (checkpoints); the
    loop owns the learning rate (``lr_at``), the progress bar, the time budget and the records.

    Parameters
    ----------
    step : ``f(i) -> dict`` for step ``i`` (from ``start_step``): one optimisation step; returns
        the step's numbers (``loss`` ...), averaged over the steps of a record.
    total_steps : steps of the run (with ``budget``: the plan before the first measurement).
    record_every : steps per record (an epoch, or a fixed count).
    optimizer : whose parameter groups get ``lr_at``'s learning rate before each step, and whose
        learning rate the progress bar shows.
    lr_at : ``f(i, total) -> float``, the learning rate of step ``i`` of ``total`` (None: the
        caller's scheduler sets it inside ``step``).
    on_record : ``f(record) -> dict | None`` when a record is made, before the budget is refitted
        (validation; its return is merged in).
    after_record : ``f(record)`` once the record is in the history (checkpoints, logs).
    budget : a :class:`TimeBudget` whose plan (in records of ``record_every`` steps after
        ``start_step``) replaces ``total_steps``; calibrated on the first steps of this run and
        refitted after each record; the record gains ``planned_epochs`` (of this run) and
        ``budget_left_s``.
    start_step : the step to start from (a resumed run).
    stop_step : stop after this step although the plan goes on (the schedule is unchanged).
    progress : a tqdm progress bar over steps, with the last loss, learning rate and budget.
    desc : the bar's label.
    history : the :class:`History` to append to (None: a new one).

    Returns
    -------
    History
        one record per ``record_every`` steps and one at the end: ``step``, the step numbers
        averaged, ``lr`` (with ``lr_at``) and ``seconds`` since the start.
    """
    history = History() if history is None else history
    every = max(1, int(record_every))
    start = int(start_step)

    def total() -> int:  # a budget plans the records of this run, after ``start``
        n = start + budget.planned_epochs * every if budget is not None else int(total_steps)
        return n if stop_step is None else min(n, int(stop_step))

    if budget is not None:
        budget.start()
    t0 = time.perf_counter()
    acc: dict[str, list[float]] = {}
    bar = tqdm(total=total(), initial=min(start, total()), desc=desc, unit="step", disable=not progress)
    i, lr = start, None
    try:
        while i < total():
            if lr_at is not None:
                lr = float(lr_at(i, total()))
                for g in optimizer.param_groups:
                    g["lr"] = lr
            numbers = step(i) or {}
            bad = {k: float(v) for k, v in numbers.items() if "loss" in k and not math.isfinite(float(v))}
            if bad:  # the weights are no longer finite from here on; the last record's checkpoint is kept
                raise FloatingPointError(
                    f"{', '.join(f'{k} is {v}' for k, v in bad.items())} at step {i + 1}"
                    + (f" (learning rate {lr:.3g})" if lr is not None else "")
                    + "; training stopped. Lower the learning rate, or check the data.")
            for k, v in numbers.items():
                acc.setdefault(k, []).append(float(v))
            i += 1
            if budget is not None and not budget.calibrated:
                budget.after_step(i - start)
                bar.total = total()
            if progress:
                shown = {"loss": f"{numbers['loss']:.3f}"} if "loss" in numbers else {}
                if optimizer is not None:
                    shown["lr"] = f"{optimizer.param_groups[0]['lr']:.2g}"
                if budget is not None:
                    shown["budget"] = budget.describe()
                bar.set_postfix(shown, refresh=False)
            bar.update(1)
            if i % every == 0 or i >= total():
                rec: dict[str, Any] = {"step": i, **{k: sum(v) / len(v) for k, v in acc.items()}}
                if lr is not None:
                    rec["lr"] = lr
                acc = {}
                rec.update((on_record(rec) if on_record is not None else None) or {})
                rec["seconds"] = time.perf_counter() - t0
                if budget is not None and i % every == 0:
                    budget.after_epoch((i - start) // every)
                    rec.update(planned_epochs=budget.planned_epochs, budget_left_s=round(budget.left_s, 1))
                    bar.total = total()
                history.append(rec)
                if after_record is not None:
                    after_record(rec)
    finally:
        bar.close()
    return history
