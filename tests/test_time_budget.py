"""Time-budgeted training: the plan fits the budget, the schedule finishes, too small is an error."""
import itertools

import numpy as np
import pytest
import torch

from smearlab.core import training
from smearlab.core.training import TimeBudget
from smearlab.detection import DetectorConfig, TrainConfig, build_detector, train_detector
from smearlab.detection.train import _lr_lambda


class FakeClock:
    """Seconds that advance only when the test says so."""

    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def _run(budget: TimeBudget, clock: FakeClock, step_s: float, val_s: float) -> float:
    """Simulate a loop: steps of ``step_s``, then ``val_s`` of validation per epoch."""
    done = 0
    budget.start()
    while done < budget.planned_epochs:
        for k in range(budget.steps_per_epoch):
            clock.t += step_s
            if done == 0:
                budget.after_step(k + 1)
        clock.t += val_s
        done += 1
        budget.after_epoch(done)
    return clock.t


@pytest.mark.parametrize("step_s, val_s", [(1.0, 0.0), (1.0, 3.0), (0.25, 1.0)])
def test_the_plan_fills_the_budget_without_passing_it(step_s, val_s):
    clock = FakeClock()
    b = TimeBudget(100, 10, clock=clock)
    elapsed = _run(b, clock, step_s, val_s)
    epoch = 10 * step_s + val_s
    assert elapsed <= 100 and elapsed > 100 - 2 * epoch  # no epoch it could afford is left unused
    assert b.planned_epochs == int(elapsed / epoch + 0.5)


def test_a_slower_machine_later_shortens_the_plan_but_never_lengthens_it_late():
    b, clock = _calibrated(100, 1.0)
    assert b.planned_epochs == 10
    assert b.after_epoch(1) == 10
    for done in range(2, 6):
        clock.t += 10.0
        assert b.after_epoch(done) == 10
    clock.t += 15.0                                   # epoch 6 took half as long again
    assert b.after_epoch(6) == 8                      # 35 s left at 15 s an epoch
    clock.t += 1.0                                    # ... and the next one was quick again
    assert b.after_epoch(7) == 8                      # the plan does not grow back late in the run


def test_periodic_validation_epochs_average_out():
    """Validation every fifth epoch: the window of five averages it instead of cutting the plan
    each time a validation epoch comes last."""
    clock = FakeClock()
    b = TimeBudget(200, 10, clock=clock, window=5)
    b.start()
    for k in range(10):
        clock.t += 0.2
        b.after_step(k + 1)
    done = 0
    while done < b.planned_epochs:
        done += 1
        clock.t += 2.0 + (3.0 if done % 5 == 0 else 0.0)   # 2 s epochs, +3 s of validation every fifth
        b.after_epoch(done)
    assert clock.t <= 200 and clock.t > 200 - 2 * 5.0
    assert b.epoch_estimate_s() == pytest.approx(2.6, rel=0.02)


def test_every_process_follows_the_shared_plan():
    """Under DDP each rank measures its own speed; ``share`` (rank 0's plan, broadcast) decides."""
    clock, seen = FakeClock(), []

    def share(plan):
        seen.append(plan)
        return 4                                      # what rank 0 planned
    b = TimeBudget(100, 10, clock=clock, share=share)
    b.start()
    for k in range(10):
        clock.t += 1.0
        b.after_step(k + 1)
    assert seen == [10] and b.planned_epochs == 4     # this rank alone would have planned 10
    clock.t += 0.5
    assert b.after_epoch(1) == 4 and seen[-1] == 9    # 89.5 s left at 10.5 s an epoch: 1 + 8
    with pytest.raises(ValueError, match="too small for one epoch"):
        tiny = TimeBudget(100, 10, clock=clock, share=lambda plan: 0)
        tiny.start()
        for k in range(10):
            clock.t += 1.0
            tiny.after_step(k + 1)


def test_a_budget_too_small_for_one_epoch_is_a_clear_error():
    clock = FakeClock()
    b = TimeBudget(30, 20, clock=clock)
    with pytest.raises(ValueError, match=r"time budget of 30 s is too small for one epoch.*20 steps of 2\.00 s"):
        for k in range(20):
            clock.t += 2.0
            b.after_step(k + 1)
    with pytest.raises(ValueError, match="positive"):
        TimeBudget(0, 10)
    with pytest.raises(ValueError, match="time_budget_s"):
        TrainConfig(time_budget_s=-5)


def test_the_schedule_spans_the_planned_epochs_and_ends_at_its_final_value():
    plan = {"epochs": 12}
    f = _lr_lambda(TrainConfig(warmup_iters=4, lr_schedule="cosine"), 10, lambda: plan["epochs"])
    assert f(50) == pytest.approx(0.5 * (1 + np.cos(np.pi * 50 / 120)))
    plan["epochs"] = 5  # the budget's plan changed after calibration
    assert f(50) == pytest.approx(0.0) and f(25) == pytest.approx(0.5)


def test_budgeted_training_runs_the_planned_epochs_and_finishes_its_schedule(monkeypatch):
    """A real (tiny) training under a fake clock: each clock reading is one second later."""
    ticks = itertools.count()
    monkeypatch.setattr(training, "clock", lambda: float(next(ticks)))
    from smearlab.data.synthetic import make_dataset
    ds = make_dataset(6, seed=0, width=96, height=80)
    torch.manual_seed(0)
    cfg = DetectorConfig(arch="fasterrcnn_tiny", class_names=ds.class_names, min_size=80, max_size=96)
    model = build_detector(cfg)
    hist = train_detector(model, ds, tcfg=TrainConfig(batch_size=2, lr=0.01, warmup_iters=2, device="cpu",
                                                           time_budget_s=40, epochs=50), progress=False)
    assert len(hist) == hist[-1]["planned_epochs"] >= 1
    assert hist[-1]["lr_end"] == pytest.approx(0.0, abs=1e-9)  # the cosine schedule ran to its end
    with pytest.raises(ValueError, match="too small for one epoch"):  # 6 steps of 0.2 fake seconds
        train_detector(build_detector(cfg), ds, tcfg=TrainConfig(batch_size=1, device="cpu", time_budget_s=1),
                       progress=False)


def test_a_resumed_budgeted_run_plans_its_own_epochs_and_ends_on_whole_ones(monkeypatch, tmp_path):
    """The budget of a resumed run is for the epochs after the checkpoint: no record mid-epoch."""
    ticks = itertools.count()
    monkeypatch.setattr(training, "clock", lambda: float(next(ticks)))
    from smearlab.data.synthetic import make_dataset
    ds = make_dataset(6, seed=0, width=96, height=80)
    cfg = DetectorConfig(arch="fasterrcnn_tiny", class_names=ds.class_names, min_size=80, max_size=96)
    tc = dict(batch_size=1, lr=0.01, warmup_iters=2, device="cpu", out_dir=tmp_path, epochs=50)
    torch.manual_seed(0)
    train_detector(build_detector(cfg), ds, tcfg=TrainConfig(**tc), progress=False, until_epoch=4)
    hist = train_detector(build_detector(cfg), ds, tcfg=TrainConfig(**tc, time_budget_s=15), progress=False,
                          resume=True)
    epochs = hist.column("epoch")
    assert epochs[:4] == [1, 2, 3, 4] and epochs == list(range(1, len(epochs) + 1)) and len(epochs) > 4
    assert all(r["steps"] == 6 for r in hist.records)  # whole epochs of 6 images only
    assert len(epochs) - 4 == hist[-1]["planned_epochs"]  # the plan counts this run's epochs
    assert hist[-1]["lr_end"] == pytest.approx(0.0, abs=1e-9)  # the schedule spans all epochs and ends


def test_the_command_line_takes_a_time_budget(monkeypatch, tmp_path, capsys):
    """``python -m smearlab.detection.train ... --time-budget-s S`` (the README's DDP command)."""
    import json

    from smearlab.detection.train import main
    ticks = itertools.count()
    monkeypatch.setattr(training, "clock", lambda: float(next(ticks)))
    assert main(["--synthetic", "4", "--width", "96", "--height", "80", "--arch", "fasterrcnn_tiny",
                 "--min-size", "80", "--max-size", "96", "--batch-size", "2", "--lr", "0.01", "--warmup-iters", "2",
                 "--device", "cpu", "--time-budget-s", "30", "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["epoch"] == last["planned_epochs"] >= 1 and "budget_left_s" in last  # the budget planned the run
    assert last["lr_end"] == pytest.approx(0.0, abs=1e-9)
    assert (tmp_path / "run" / "model" / "weights.pt").is_file()  # the trained model folder


def test_an_epoch_the_budget_makes_the_last_after_its_record_is_validated(monkeypatch, tmp_path):
    """With ``val_every`` 2, a slowdown in epoch 3 makes the refit end the run there, after the
    record had decided (plan 25) not to validate it: the final model is validated all the same."""
    from smearlab.data.synthetic import make_dataset
    now = {"t": 0.0, "samples": 0}
    monkeypatch.setattr(training, "clock", lambda: now["t"])

    def slow(sample):  # each training image costs 1 fake second in epochs 1-2, 30 afterwards
        now["samples"] += 1
        now["t"] += 1.0 if now["samples"] <= 8 else 30.0
        return sample

    ds = make_dataset(4, seed=0, width=96, height=80)
    torch.manual_seed(0)
    cfg = DetectorConfig(arch="fasterrcnn_tiny", class_names=ds.class_names, min_size=80, max_size=96)
    hist = train_detector(build_detector(cfg), ds, ds, tcfg=TrainConfig(
        batch_size=1, lr=0.01, warmup_iters=2, device="cpu", time_budget_s=100, epochs=50, val_every=2,
        augment=slow, out_dir=tmp_path), progress=False)
    # the slowdown cut the plan to the epochs done: one more epoch finishes the schedule
    assert hist.column("planned_epochs") == [25, 25, 4, 4] and hist[-1]["lr_end"] == pytest.approx(0.0, abs=1e-9)
    assert "val_mAP50" in hist[1] and "val_mAP50" in hist[-1] and "val_mAP50" not in hist[0]
    assert hist.best_epoch in (2, 4)
    assert hist.best_value == max(hist[1]["val_mAP"], hist[-1]["val_mAP"])  # best_metric mAP
    import json
    saved = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert "val_mAP50" in saved[-1]  # the run folder's record of the last epoch has it too
    ck = torch.load(tmp_path / "last.pt", weights_only=False)
    assert ck["history"]["best_epoch"] == hist.best_epoch and "val_mAP" in ck["history"]["records"][-1]


def _calibrated(budget: float, step_s: float):
    """A budget of 10-step epochs and its clock, calibrated on steps of ``step_s`` seconds."""
    clock = FakeClock()
    b = TimeBudget(budget, 10, clock=clock)
    b.start()
    for k in range(10):
        clock.t += step_s
        b.after_step(k + 1)
    return b, clock


@pytest.mark.parametrize("budget, epochs", [(100, 41), (50, 16)])
def test_a_slow_warm_up_epoch_neither_shrinks_nor_holds_down_the_plan(budget, epochs):
    """On the GPU the first epoch (kernel selection) took ten times the others: the 5-minute CBC
    run planned 26 epochs and ended with a third of its budget unused. The estimate leaves the
    warm-up epoch out, so the plan fills the budget; and a warm-up over a third of the budget (20 s
    of 50) no longer holds the plan at what it allowed (2 epochs in 22 s)."""
    b, clock = _calibrated(budget, 2.0)              # calibration inside the slow warm-up
    done = 1
    b.after_epoch(done)                               # a 20 s first epoch
    while done < b.planned_epochs:
        clock.t += 2.0                                # then 2 s epochs
        done += 1
        b.after_epoch(done)
    assert done == epochs and clock.t <= budget      # 1 + (budget - 20 s) / 2 s: the whole budget
    assert b.epoch_estimate_s() == 2.0


def test_a_run_out_of_time_before_its_plan_ends_finishes_its_schedule_in_one_more_epoch():
    """A slowdown late in the run made the plan the epochs done: the run stopped with the learning
    rate at 69 % of its peak (the last epochs ran on the schedule of the longer plan)."""
    b, clock = _calibrated(100, 1.0)
    assert b.planned_epochs == 10
    b.after_epoch(1)
    for done in range(2, 9):
        clock.t += 10.0 if done < 8 else 40.0             # epoch 8 took four times as long
        plan = b.after_epoch(done)
    assert plan == 9                                      # no time left: one more epoch, not none
    clock.t += 40.0
    assert b.after_epoch(9) == 9                          # and then it ends


def test_a_budget_goes_on_from_its_checkpoint():
    b, clock = _calibrated(100, 1.0)
    b.after_epoch(1)
    for done in range(2, 4):
        clock.t += 10.0
        b.after_epoch(done)
    state = b.state()
    assert state["planned_epochs"] == 10 and state["spent_s"] == pytest.approx(clock.t)
    again = TimeBudget(100, 10, clock=clock)
    again.resume(state, 3)
    again.start()
    assert again.planned_epochs == 7 and again.elapsed_s == pytest.approx(state["spent_s"]) and again.calibrated
    assert again.warm_up == [0, 3]                        # the resumed run's first epoch warms up again
    clock.t += 30.0                                       # ... and is left out of the estimate
    again.after_epoch(1)
    assert again.epoch_estimate_s() == pytest.approx(10.0)
    finished = TimeBudget(100, 10, clock=clock)
    finished.resume({**state, "planned_epochs": 3}, 3)
    assert finished.planned_epochs == 0                   # a finished run has nothing left to train


def test_resuming_a_finished_budgeted_run_trains_nothing_more(monkeypatch, tmp_path):
    """A new budget after the checkpoint trained a whole budget again, the learning rate raised."""
    ticks = itertools.count()
    monkeypatch.setattr(training, "clock", lambda: float(next(ticks)))
    from smearlab.data.synthetic import make_dataset
    ds = make_dataset(4, seed=0, width=96, height=80)
    cfg = DetectorConfig(arch="fasterrcnn_tiny", class_names=ds.class_names, min_size=80, max_size=96)
    tc = TrainConfig(batch_size=2, lr=0.01, warmup_iters=2, device="cpu", out_dir=tmp_path, epochs=50,
                     time_budget_s=40)
    torch.manual_seed(0)
    first = train_detector(build_detector(cfg), ds, tcfg=tc, progress=False)
    weights = torch.load(tmp_path / "model" / "weights.pt", weights_only=True)["state_dict"]
    again = train_detector(build_detector(cfg), ds, tcfg=tc, progress=False, resume=True)
    assert again.column("epoch") == first.column("epoch")
    after = torch.load(tmp_path / "model" / "weights.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(v, after[k]) for k, v in weights.items())


def test_after_a_replan_every_step_runs_at_the_new_plan_s_rate(monkeypatch):
    """The scheduler set each step's rate at the end of the step before, under the plan then: after
    the budget shrank the plan from 100 epochs to 8, the epoch meant to finish the schedule ran at
    99 % of the peak rate and the record still said it ended at 0."""
    import math

    from torch.optim.optimizer import register_optimizer_step_pre_hook

    from smearlab.data.synthetic import make_dataset
    now = {"t": 0.0, "n": 0}
    monkeypatch.setattr(training, "clock", lambda: now["t"])

    def slow(sample):  # quick at first, then each image takes 70 s: the plan shrinks
        now["n"] += 1
        now["t"] += 1.0 if now["n"] <= 6 else 70.0
        return sample
    used = []
    hook = register_optimizer_step_pre_hook(lambda opt, a, k: used.append(opt.param_groups[0]["lr"]))
    try:
        ds = make_dataset(2, seed=0, width=96, height=80)
        torch.manual_seed(0)
        cfg = DetectorConfig(arch="fasterrcnn_tiny", class_names=ds.class_names, min_size=80, max_size=96)
        h = train_detector(build_detector(cfg), ds, tcfg=TrainConfig(
            batch_size=1, lr=0.01, warmup_iters=1, device="cpu", time_budget_s=100, epochs=50, augment=slow,
            max_steps_per_epoch=1), progress=False)
    finally:
        hook.remove()
    n = h[-1]["planned_epochs"]
    assert n < 50 and len(used) == n
    assert used[-1] == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi * (n - 1) / n)), rel=1e-6)
    assert h[-1]["lr"] == pytest.approx(used[-1])
