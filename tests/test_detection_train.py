"""Training loop: loss goes down, exact resume, NaN stop, empty images, label checks, DDP (gloo)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from smearlab.core.training import History
from smearlab.data import Sample, SmearDataset
from smearlab.data.synthetic import make_dataset
from smearlab.detection.models import DetectorConfig, build_detector
from smearlab.data.derive import remap_dataset
from smearlab.detection.train import TrainConfig, param_digest, train_detector


def tiny(ds, size=128, seed=0):
    cfg = DetectorConfig(arch="fasterrcnn_tiny", class_names=ds.class_names, min_size=size, max_size=size)
    torch.manual_seed(seed)
    return build_detector(cfg), cfg


@pytest.fixture(scope="module")
def ds128():
    return make_dataset(4, seed=3, width=128, height=128)


def test_loss_goes_down(tmp_path):
    ds = make_dataset(8, seed=0, width=192, height=192)
    model, cfg = tiny(ds, 192)
    tc = TrainConfig(epochs=6, batch_size=2, lr=0.02, warmup_iters=2, device="cpu", out_dir=tmp_path)
    h = train_detector(model, ds, None, tc, progress=False)
    losses = h.step_losses
    assert len(losses) == 24 and all(np.isfinite(losses))
    assert np.mean(losses[-4:]) < 0.85 * np.mean(losses[:3]), losses
    recs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in recs] == list(range(1, 7))
    assert {"lr", "loss", "loss_classifier", "loss_objectness", "images_per_s", "time_s"} <= set(recs[0])
    assert (tmp_path / "metrics.csv").read_text().startswith("epoch,")
    assert (tmp_path / "last.pt").is_file() and (tmp_path / "model" / "weights.pt").is_file()
    assert (tmp_path / "best" / "config.json").is_file()  # no validation: best = final


def test_resume_is_exact(tmp_path, ds128):
    tc = dict(epochs=2, batch_size=2, lr=0.01, warmup_iters=1, device="cpu", seed=7)
    a, cfg = tiny(ds128)
    train_detector(a, ds128, None, TrainConfig(**tc, out_dir=tmp_path / "a"), progress=False)

    b, _ = tiny(ds128)
    train_detector(b, ds128, None, TrainConfig(**tc, out_dir=tmp_path / "b"), progress=False, until_epoch=1)
    ck = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert ck["epoch"] == 1
    assert not (tmp_path / "b" / "model").exists()  # a paused run does not look finished
    # a fresh process would rebuild the model: do so, with other RNG states in between
    torch.manual_seed(123), np.random.seed(5)
    b2, _ = tiny(ds128, seed=99)
    h = train_detector(b2, ds128, None, TrainConfig(**tc, out_dir=tmp_path / "b"), progress=False, resume=True)
    assert [r["epoch"] for r in h.records] == [1, 2]
    sa, sb = a.state_dict(), b2.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert len((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()) == 2
    assert (tmp_path / "b" / "model" / "weights.pt").is_file()


def test_checkpoint_every_writes_last_pt_every_n_epochs_and_at_the_end(tmp_path, ds128, monkeypatch):
    from smearlab.detection import train as train_mod
    saved, orig = [], train_mod._save_torch

    def spy(obj, path):
        saved.append(obj["epoch"])
        orig(obj, path)
    monkeypatch.setattr(train_mod, "_save_torch", spy)
    tc = dict(batch_size=2, lr=0.01, warmup_iters=1, device="cpu", checkpoint_every=2)
    model, _ = tiny(ds128)
    train_detector(model, ds128, None, TrainConfig(epochs=3, out_dir=tmp_path / "a", **tc), progress=False)
    assert saved == [2, 3]                                  # every second epoch, and the last
    recs = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    assert len(recs) == 3                                   # the metrics are still written every epoch
    saved.clear()
    model, _ = tiny(ds128)
    train_detector(model, ds128, None, TrainConfig(epochs=6, out_dir=tmp_path / "b", **{**tc, "checkpoint_every": 5}),
                   progress=False, until_epoch=1)
    assert saved == [1]                                     # stopping early writes where it stopped
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=True)["epoch"] == 1
    with pytest.raises(ValueError, match="checkpoint_every"):
        TrainConfig(checkpoint_every=0)


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path, ds128):
    model, cfg = tiny(ds128)
    orig = model.forward
    calls = {"n": 0}

    def forward(images, targets=None):
        out = orig(images, targets)
        calls["n"] += 1
        if model.training and calls["n"] > 2:  # epoch 2, step 1
            out = {k: v * float("nan") for k, v in out.items()}
        return out

    model.forward = forward
    tc = TrainConfig(epochs=3, batch_size=2, lr=0.01, warmup_iters=0, device="cpu", out_dir=tmp_path)
    with pytest.raises(FloatingPointError, match=r"epoch 2, step 1 \(learning rate [0-9.e-]+.*last\.pt"):
        train_detector(model, ds128, None, tc, progress=False)
    ck = torch.load(tmp_path / "last.pt", weights_only=True)
    assert ck["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def test_images_without_boxes_train(tmp_path, ds128):
    empty = Sample("empty", _image=np.full((128, 128, 3), 230, np.uint8))
    ds = SmearDataset([empty, *ds128.samples[:1], empty], ds128.class_names, "with-empty")
    model, cfg = tiny(ds)
    h = train_detector(model, ds, None, TrainConfig(epochs=1, batch_size=3, lr=0.01, device="cpu"),
                       progress=False)
    assert len(h.step_losses) == 1 and np.isfinite(h.step_losses[0])


def test_unknown_class_is_refused_before_training(ds128):
    s = Sample("p", boxes=[[10, 10, 30, 30]], labels=[3], _image=np.zeros((64, 64, 3), np.uint8))
    ds = SmearDataset([s], [*ds128.class_names, "Parasite"], "with-parasite")
    model, cfg = tiny(ds128)
    with pytest.raises(ValueError, match="'Parasite'"):
        train_detector(model, ds, None, TrainConfig(epochs=1, device="cpu"), progress=False)
    # another order of known classes is mapped by name
    r = remap_dataset(SmearDataset([Sample("q", boxes=[[1, 1, 5, 5]], labels=[0], _image=s.image)],
                                    ["Platelets", "RBC"], "x"), ["RBC", "WBC", "Platelets"], "training")
    assert r.class_names == ["RBC", "WBC", "Platelets"] and r[0].labels.tolist() == [2]


def test_validation_picks_best(tmp_path, ds128):
    model, cfg = tiny(ds128)
    scores = iter([0.3, 0.6, 0.4])
    seen = []

    def fake_eval(dataset, predictions):
        seen.append(len(predictions))
        assert all(set(p) == {"boxes", "scores", "labels"} for p in predictions)
        v = next(scores)
        return {"mAP50": v, "mAP": v / 2}

    tc = TrainConfig(epochs=3, batch_size=2, lr=0.01, device="cpu", out_dir=tmp_path, max_steps_per_epoch=1)
    h = train_detector(model, ds128, ds128.subset([0, 1]), tc, evaluate_fn=fake_eval, progress=False)
    assert seen == [2, 2, 2]
    assert h.column("val_mAP50") == [0.3, 0.6, 0.4]
    assert h.best_epoch == 2 and h.best_value == pytest.approx(0.3)
    ck = torch.load(tmp_path / "best" / "weights.pt", weights_only=True)
    assert ck["class_names"] == ds128.class_names
    again = History.load(tmp_path)          # the run folder's history finds the same best epoch
    assert again.column("val_mAP50") == [0.3, 0.6, 0.4]
    assert (again.best_metric, again.best_epoch, again.best_value) == ("mAP", 2, pytest.approx(0.3))
    import shutil
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(tmp_path / "metrics.jsonl", bare)   # no saved model: no metric, no best epoch claimed
    assert History.load(bare).best_epoch is None and History.load(bare, "mAP50").best_epoch == 2


def test_ddp_gloo_two_processes(tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "smearlab.detection.train", "--synthetic", "4", "--width", "128", "--height", "128",
           "--arch", "fasterrcnn_tiny", "--min-size", "128", "--max-size", "128", "--epochs", "2",
           "--batch-size", "1", "--lr", "0.01", "--warmup-iters", "1", "--device", "cpu",
           "--out", str(out), "--no-progress", "--param-digest"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    d0 = (out / "param_digest.rank0.txt").read_text().strip()
    d1 = (out / "param_digest.rank1.txt").read_text().strip()
    assert d0 == d1
    ck = torch.load(out / "last.pt", weights_only=True)
    assert ck["epoch"] == 2 and ck["world_size"] == 2 and len(ck["rng_per_rank"]) == 2
    a0, a1 = (r["augment"] for r in ck["rng_per_rank"])  # each rank drew its own augmentations
    assert not torch.equal(a0, a1) and torch.equal(a0, ck["augment_rng"])
    assert ck["steps_per_epoch"] == 2  # 4 images, 2 ranks, batch 1
    ds = make_dataset(1, seed=0, width=128, height=128)
    m, _ = tiny(ds)
    m.load_state_dict(ck["model"])
    assert param_digest(m) == d0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2  # written once (rank 0)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_cli_box_head_options_reach_the_saved_model(tmp_path, capsys):
    """``--fine-level`` and ``--box-loss`` (DetectorConfig fields) are options of the training
    command, and the saved model folder's config.json holds them; a wrong value is refused by the
    parser with the choices named."""
    from smearlab.detection.train import main

    out = tmp_path / "run"
    assert main(["--synthetic", "2", "--width", "96", "--height", "96", "--arch", "fasterrcnn_tiny",
                 "--min-size", "96", "--max-size", "96", "--epochs", "1", "--batch-size", "2", "--lr", "0.01",
                 "--warmup-iters", "1", "--device", "cpu", "--fine-level", "lateral", "--box-loss", "giou",
                 "--out", str(out), "--no-progress"]) == 0
    cfg = json.loads((out / "model" / "config.json").read_text())
    assert cfg["fine_level"] == "lateral" and cfg["box_loss"] == "giou"
    with pytest.raises(SystemExit):
        main(["--synthetic", "2", "--box-loss", "iou", "--out", str(tmp_path / "bad")])
    assert "invalid choice" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_default_augment_by_name_and_in_the_recipes():
    """``augment="default"`` is the seeded default augmentation, and every detector recipe of the
    notebooks trains with it, as the benchmarks do (notebook 03 once trained without it)."""
    from smearlab.augment import Augment, default_augment
    from smearlab.experiments.profiles import CPU_DETECTION_RECIPE, GPU_RECIPE, settings

    tc = TrainConfig(augment="default", seed=5)
    assert isinstance(tc.augment, Augment) and repr(tc.augment) == repr(default_augment(5))
    assert TrainConfig().augment is None
    with pytest.raises(ValueError, match="augment"):
        TrainConfig(augment="flips")
    for recipe in (CPU_DETECTION_RECIPE, GPU_RECIPE):
        assert isinstance(TrainConfig(**recipe).augment, Augment)
    for nb in ("03_detection", "09_counting"):
        assert settings(nb, quick=False).recipe["augment"] == "default"
        assert settings(nb, quick=False, gpu=True).recipe["augment"] == "default"
        assert settings(nb, quick=True).recipe["augment"] is None  # eight epochs: too short to pay


def test_augment_hooks(ds128):
    """A callable augments each sample on the CPU; an object with .batch gets device batches."""
    seen = {"sample": 0, "batch": 0}

    def per_sample(s):
        seen["sample"] += 1
        return s

    class Flip:
        def batch(self, images, targets):
            seen["batch"] += 1
            out = []
            for im, t in zip(images, targets):
                w = im.shape[-1]
                b = t["boxes"].clone()
                b[:, [0, 2]] = w - t["boxes"][:, [2, 0]]
                out.append({"boxes": b, "labels": t["labels"]})
            return [im.flip(-1) for im in images], out

    for aug in (per_sample, Flip()):
        model, cfg = tiny(ds128)
        train_detector(model, ds128, None, TrainConfig(epochs=1, batch_size=2, device="cpu", augment=aug),
                       progress=False)
    assert seen == {"sample": 4, "batch": 2}


def test_smearlab_augment_trains_on_cpu(ds128):
    """Augment has both paths: on the CPU it runs per sample (and must not crash on lists)."""
    from smearlab.augment import default_augment
    from smearlab.detection.train import _augment_batch
    model, cfg = tiny(ds128)
    train_detector(model, ds128, None, TrainConfig(epochs=1, batch_size=2, device="cpu",
                                                        augment=default_augment(0)), progress=False)
    images = [torch.rand(3, 32, 40), torch.rand(3, 24, 40)]  # different sizes: one by one
    targets = [{"boxes": torch.tensor([[1.0, 1.0, 9.0, 9.0]]), "labels": torch.tensor([1])}] * 2
    out, tg = _augment_batch(default_augment(0), images, targets)
    assert len(out) == 2 and len(tg) == 2 and out[1].shape[0] == 3


def test_gpu_image_store_batches(ds128):
    """The data_on_gpu store (exercised on the CPU here) yields what the DataLoader yields."""
    from smearlab.data.torchdata import DetectionDataset
    from smearlab.detection.train import _GpuImages
    store = _GpuImages(ds128, grayscale=True, device=torch.device("cpu"))
    imgs, tg = store.batch([2, 0])
    ref = DetectionDataset(ds128, grayscale=True)
    for im, t, i in zip(imgs, tg, [2, 0]):
        r_im, r_t = ref[i]
        assert torch.allclose(im, r_im, atol=1e-6)
        assert torch.equal(t["boxes"], r_t["boxes"]) and torch.equal(t["labels"], r_t["labels"])


def test_the_call_shape_is_every_tasks(ds128):
    """train_detector(model, train, val, tcfg): the model carries its config; passing it is a clear error."""
    model, cfg = tiny(ds128)
    with pytest.raises(TypeError, match="takes no DetectorConfig"):
        train_detector(model, cfg, ds128, progress=False)
    with pytest.raises(ValueError, match="build_detector or load_model"):
        train_detector(torch.nn.Linear(2, 2), ds128, None, TrainConfig(epochs=1, device="cpu"), progress=False)


def test_channels_last_is_the_same_training_and_leaves_plain_weights(tmp_path, ds128):
    """The CPU default (channels-last layout) computes what the plain layout does, up to the order
    of float sums, and hands back (and saves) weights in the plain layout."""
    runs = {}
    for layout in (False, True):
        model, _ = tiny(ds128)
        tc = TrainConfig(epochs=2, batch_size=2, lr=0.01, warmup_iters=1, device="cpu", seed=3,
                         channels_last=layout, out_dir=tmp_path / str(layout))
        runs[layout] = (train_detector(model, ds128, None, tc, progress=False).step_losses, model)
    # the same first steps; later ones drift apart as proposals near a sampling tie fall either way
    np.testing.assert_allclose(runs[True][0][:2], runs[False][0][:2], rtol=1e-4)
    assert len(runs[True][0]) == 4 and all(np.isfinite(runs[True][0]))
    model = runs[True][1]
    assert all(p.is_contiguous() for p in model.parameters())
    saved = torch.load(tmp_path / "True" / "model" / "weights.pt", weights_only=True)["state_dict"]
    assert all(v.is_contiguous() for v in saved.values())


def test_cpu_bf16_trains_and_predicts_in_float32(ds128):
    from smearlab.detection import predict

    model, _ = tiny(ds128)
    tc = TrainConfig(epochs=3, batch_size=2, lr=0.01, warmup_iters=1, device="cpu", cpu_bf16=True)
    h = train_detector(model, ds128, None, tc, progress=False)
    assert all(np.isfinite(h.step_losses)) and len(h.step_losses) == 6
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast leaves the weights float32
    preds = predict(model, ds128, progress=False)
    assert len(preds) == len(ds128) and all(np.asarray(p["boxes"]).dtype == np.float32 for p in preds)


def test_cpu_bf16_widens_the_head_outputs_to_float32_while_training_only(ds128):
    """Box coding under bfloat16 autocast would round small proposals to zero width (NaN box loss):
    the heads hand on float32, and the hooks are gone once training ends."""
    from smearlab.detection.train import _float32_head_outputs

    model, _ = tiny(ds128)
    hooks = _float32_head_outputs(model)
    assert len(hooks) == 2  # the RPN head and the box predictor
    feats = {"0": torch.randn(1, 64, 16, 16)}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        objectness, deltas = model.rpn.head(list(feats.values()))
        scores, boxes = model.roi_heads.box_predictor(torch.randn(5, 128).bfloat16())
    assert all(t.dtype == torch.float32 for t in (*objectness, *deltas, scores, boxes))
    for h in hooks:
        h.remove()
    train_detector(model, ds128, None, TrainConfig(epochs=1, batch_size=2, device="cpu", cpu_bf16=True),
                   progress=False)
    assert not model.rpn.head._forward_hooks and not model.roi_heads.box_predictor._forward_hooks


def test_ema_model_follows_the_warm_up_then_the_decay():
    from smearlab.core.training import ema_model

    net = torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.BatchNorm1d(1))
    ema = ema_model(net, 0.9)
    values = []
    for n, v in enumerate([1.0, 2.0, 3.0, 4.0] + [10.0] * 40):
        with torch.no_grad():
            net[0].bias.fill_(v)
        net[1].num_batches_tracked.fill_(n)
        ema.update_parameters(net)
        values.append(float(ema.module[0].bias.detach()))
    assert values[0] == 1.0  # the first update copies
    # update n (n averaged so far) moves by 1 - min(0.9, (1 + n) / (10 + n)): 1 - 2/11 at n = 1
    assert values[1] == pytest.approx(1.0 + (2.0 - 1.0) * (1 - 2 / 11))
    assert values[-1] == pytest.approx(10.0, abs=0.2) and values[-1] < 10.0
    assert int(ema.module[1].num_batches_tracked) == 43  # integer buffers are copied
    with pytest.raises(ValueError, match="decay"):
        ema_model(net, 1.0)


def test_ema_training_ends_with_the_average_and_keeps_the_raw_weights(tmp_path, ds128):
    with pytest.raises(ValueError, match="ema_decay"):
        TrainConfig(ema_decay=0)
    model, _ = tiny(ds128)
    tc = TrainConfig(epochs=3, batch_size=2, lr=0.01, warmup_iters=1, device="cpu", seed=1, ema_decay=0.5,
                     out_dir=tmp_path)
    h = train_detector(model, ds128, ds128, tc, progress=False)
    assert all(np.isfinite(h.step_losses)) and "val_mAP" in h.records[-1]
    ck = torch.load(tmp_path / "last.pt", weights_only=True)
    raw, avg = ck["model"], {k[len("module."):]: v for k, v in ck["ema"].items() if k.startswith("module.")}
    assert int(ck["ema"]["n_averaged"]) == 6
    saved = torch.load(tmp_path / "model" / "weights.pt", weights_only=True)["state_dict"]
    state = model.state_dict()
    moved = [k for k in raw if raw[k].is_floating_point() and not torch.equal(raw[k], avg[k])]
    assert moved  # the average differs from the last weights
    for k in moved:
        assert torch.equal(state[k], avg[k]) and torch.equal(saved[k], avg[k])


def test_dataloader_workers_draw_their_own_augmentations_each_epoch():
    """Each worker got a copy of the augmenter in one state, again every epoch."""
    from torch.utils.data import DataLoader, Dataset

    from smearlab.augment import default_augment
    from smearlab.detection.train import _seed_worker

    class Draws(Dataset):
        def __init__(self):
            self.transform = default_augment(0)

        def __len__(self):
            return 4

        def __getitem__(self, i):
            return float(torch.rand(1, generator=self.transform.generator))

    gen = torch.Generator().manual_seed(0)
    loader = DataLoader(Draws(), batch_size=1, num_workers=2, worker_init_fn=_seed_worker, generator=gen)
    draws = [float(x) for _ in range(2) for x in loader]
    assert len(set(draws)) == 8


@pytest.mark.parametrize("extra", [{"ema_decay": 0.6}, {"augment": "default"}], ids=["ema", "augmentation"])
def test_resume_is_exact_with_ema_or_augmentation(tmp_path, ds128, extra):
    """The weight average and the augmenter's own generator are saved in last.pt: a resumed run
    draws what the uninterrupted one drew (with augmentation it started again from the first
    epoch's draws)."""
    tc = dict(epochs=2, batch_size=2, lr=0.01, warmup_iters=1, device="cpu", seed=7, **extra)
    a, _ = tiny(ds128)
    train_detector(a, ds128, None, TrainConfig(**tc, out_dir=tmp_path / "a"), progress=False)
    b, _ = tiny(ds128)
    train_detector(b, ds128, None, TrainConfig(**tc, out_dir=tmp_path / "b"), progress=False, until_epoch=1)
    b2, _ = tiny(ds128, seed=99)
    train_detector(b2, ds128, None, TrainConfig(**tc, out_dir=tmp_path / "b"), progress=False, resume=True)
    sa, sb = a.state_dict(), b2.state_dict()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("box", [[250, 250, 300, 300], [10, 10, 10, 40], [np.nan, 10, 20, 40], [40, 40, 10, 10]])
def test_boxes_training_would_drop_or_misread_are_refused_naming_the_image(box):
    """A dataset built in code (corrections for fine-tuning) bypasses the loaders' box checks:
    a box off the image was trained on, degenerate ones vanished without a word."""
    img = np.full((192, 192, 3), 200, np.uint8)
    ds = SmearDataset([Sample("corrected-1", _image=img, boxes=[[20, 20, 40, 40], box], labels=[0, 0])], ["RBC"],
                      name="corr")
    model = build_detector(DetectorConfig(arch="fasterrcnn_tiny", class_names=["RBC"], min_size=192, max_size=192))
    with pytest.raises(ValueError, match=r"'corrected-1'.*lies off the 192x192 image"):
        train_detector(model, ds, None, TrainConfig(epochs=1, batch_size=1, device="cpu"), progress=False)


def test_a_grey_model_sees_batched_colour_augmentation_before_its_grey_conversion(ds128):
    """A batched augment (the GPU path) gets RGB batches; the grey model gets one channel after it
    (colour and stain jitter on grey batches turned them into 3 channels, or failed)."""
    from smearlab.augment import Augment, ColorJitter, StainJitter
    seen = []

    class BatchOnly:  # an augment with .batch only takes the batched path on the CPU too
        def __init__(self):
            self.aug = Augment([ColorJitter(0.2, 0.2, 0.2, 0.02, p=1.0), StainJitter(p=1.0)], seed=0)

        def batch(self, images, targets):
            seen.append(images.shape[1])
            return self.aug.batch(images, targets)

    cfg = DetectorConfig(arch="fasterrcnn_tiny", class_names=ds128.class_names, min_size=128, max_size=128,
                         in_channels=1)
    torch.manual_seed(0)
    model = build_detector(cfg)
    train_detector(model, ds128, None, TrainConfig(epochs=1, batch_size=2, device="cpu", augment=BatchOnly()),
                   progress=False)
    assert seen == [3, 3]


def test_training_sees_each_image_through_its_pipeline_once(tmp_path):
    """Validation applied the pipeline twice (once to the split, once by predict), and a model
    trained further without a pipeline given (fine-tuning) saw raw images while its predictions
    applied its saved pipeline."""
    from smearlab.detection.models import load_model
    from smearlab.preprocess import Preprocess
    tr = make_dataset(2, seed=0, width=96, height=96)
    va = make_dataset(1, seed=5, width=96, height=96)
    pre = Preprocess([("gamma", {"g": 2.0})])
    cfg = DetectorConfig(arch="fasterrcnn_tiny", class_names=tr.class_names, min_size=96, max_size=96)
    torch.manual_seed(0)
    m = build_detector(cfg)
    seen = {True: [], False: []}
    m.transform.register_forward_pre_hook(lambda mod, args: seen[mod.training].append(args[0][0].detach().clone()))
    tc = TrainConfig(epochs=1, batch_size=2, max_steps_per_epoch=1, warmup_iters=1, device="cpu", preprocess=pre,
                     lr=0.001, out_dir=tmp_path / "run")
    train_detector(m, tr, va, tc, progress=False)
    once = torch.from_numpy(pre(va[0].image)).permute(2, 0, 1).float() / 255
    assert torch.allclose(seen[False][0], once, atol=1e-6)
    # trained further with no pipeline given: the model's own applies to its training images
    loaded = load_model(tmp_path / "run" / "model", device="cpu")
    seen[True].clear()
    loaded.transform.register_forward_pre_hook(lambda mod, args: seen[mod.training].append(args[0][0].detach().clone()))
    train_detector(loaded, tr.subset([0]), None, TrainConfig(epochs=1, batch_size=1, max_steps_per_epoch=1,
                                                              warmup_iters=1, device="cpu", lr=0.001,
                                                              out_dir=tmp_path / "more"), progress=False)
    assert torch.allclose(seen[True][0], torch.from_numpy(pre(tr[0].image)).permute(2, 0, 1).float() / 255, atol=1e-6)
    assert (tmp_path / "more" / "model" / "preprocess.json").is_file()


def test_warm_up_follows_the_plan_a_time_budget_makes():
    """Warm-up was sized once from TrainConfig.epochs: a budget that planned 6 steps of a 12-epoch
    config warmed up over 6 and never reached the peak learning rate."""
    from smearlab.detection.train import _lr_lambda
    plan = {"epochs": 12}
    f = _lr_lambda(TrainConfig(epochs=12, warmup_iters=30, lr_schedule="constant"), 2, lambda: plan["epochs"])
    assert f(3) < 1.0                     # 24 steps planned: 6 of warm-up
    plan["epochs"] = 3                    # the budget re-plans: 6 steps, warm-up 1
    assert f(1) == 1.0 and f(0) < 1.0
    with pytest.raises(ValueError, match="best_metric"):
        TrainConfig(best_metric="loss")


def test_an_empty_validation_set_is_refused(ds128):
    model, cfg = tiny(ds128)
    with pytest.raises(ValueError, match="validation dataset .* is empty"):
        train_detector(model, ds128, ds128.subset([]), TrainConfig(epochs=1, batch_size=2, device="cpu"), progress=False)


def test_one_config_trained_twice_trains_alike_and_a_copy_s_seed_reaches_its_augmentation():
    """The default augmenter was built once with the config: a second run with the same config drew
    on from where the first stopped (other weights), and a copy with a fold's seed kept the first
    seed's augmenter."""
    import dataclasses
    ds = make_dataset(4, seed=3, width=96, height=96)
    cfg = DetectorConfig(arch="fasterrcnn_tiny", class_names=ds.class_names, min_size=96, max_size=96)
    shared = TrainConfig(epochs=1, batch_size=2, lr=0.01, warmup_iters=1, device="cpu", seed=5, augment="default")

    def run(tc):
        torch.manual_seed(0)
        m = build_detector(cfg)
        return train_detector(m, ds, None, tc, progress=False).step_losses
    assert run(shared) == run(shared)
    fold = dataclasses.replace(shared, seed=6)
    assert fold.augment is not shared.augment and fold.augment.generator.initial_seed() == 6
