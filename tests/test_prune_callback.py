"""GradualPruneCallback inside a real hapi fit on small synthetic data."""


import numpy as np
import paddle
import pytest
from paddle import nn

from slim_callbacks.prune import GradualPruneCallback, is_nm_sparse
from slim_callbacks.schedule import CubicSchedule
from slim_callbacks.seam import Seam


class Net(nn.Layer):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2D(4, 8, 3, padding=1, bias_attr=False)
        self.bn1 = nn.BatchNorm2D(8)
        self.conv2 = nn.Conv2D(8, 8, 3, padding=1, bias_attr=False)
        self.bn2 = nn.BatchNorm2D(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = nn.functional.relu(self.bn1(self.conv1(x)))
        x = nn.functional.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean(axis=[2, 3]))


class Data(paddle.io.Dataset):
    def __init__(self, n=64, seed=0):
        rng = np.random.RandomState(seed)
        self.y = rng.randint(0, 4, (n, 1)).astype("int64")
        self.x = (rng.randn(n, 4, 6, 6) + self.y[:, :, None, None]).astype("float32")

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def _model(opt="momentum", seed=0):
    paddle.seed(seed)
    with paddle.utils.unique_name.guard():  # same parameter names in every model, as in a new process
        net = Net()
    model = paddle.Model(net)
    if opt == "adam":
        optimizer = paddle.optimizer.Adam(0.01, parameters=net.parameters())
    else:
        optimizer = paddle.optimizer.Momentum(0.05, momentum=0.9, parameters=net.parameters(), weight_decay=5e-4)
    model.prepare(optimizer, nn.CrossEntropyLoss(), paddle.metric.Accuracy())
    return model


class Probe(paddle.callbacks.Callback):
    """Placed after the prune callback: records sparsity at epoch begin and checks zeros after each batch."""

    def __init__(self, pruner):
        super().__init__()
        self.pruner = pruner
        self.at_epoch = []
        self.violations = 0
        self.batches = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.at_epoch.append(self.pruner.masker.sparsity_report().overall)

    def on_train_batch_end(self, step, logs=None):
        self.batches += 1
        for t in self.pruner.masker.targets:
            mask = self.pruner.masker.masks.get(t.name)
            if mask is not None:
                self.violations += int((t.param.numpy()[mask.numpy() == 0] != 0).sum())


def test_cubic_schedule_values_hit_at_epoch_boundaries():
    model = _model()
    cb = GradualPruneCallback(0.75, start_epoch=0, end_epoch=3, strip_at_end=False)
    probe = Probe(cb)
    model.fit(Data(), batch_size=16, epochs=4, verbose=0, callbacks=[cb, probe])
    expected = [0.75 - 0.75 * (1 - e / 3) ** 3 for e in range(4)]  # 0, .528, .722, .75
    sizes = [t.numel for t in cb.masker.targets]
    np.testing.assert_allclose(probe.at_epoch, expected, atol=1.0 / min(sizes))
    assert [s for s, _ in cb.history] == [4, 8, 12]  # 4 updates per epoch; nothing at step 0 (sparsity 0)
    assert probe.violations == 0 and probe.batches == 16


def test_end_epoch_defaults_to_last_epoch_and_schedule_kinds():
    model = _model()
    cb = GradualPruneCallback(0.5, schedule="linear", strip_at_end=False)
    probe = Probe(cb)
    model.fit(Data(), batch_size=16, epochs=3, verbose=0, callbacks=[cb, probe])
    np.testing.assert_allclose(probe.at_epoch, [0.0, 0.25, 0.5], atol=0.01)
    # constant = one-shot at start_epoch; a config dict and a Schedule object are accepted too
    for spec, first in [("constant", 0.5), ({"kind": "linear", "end": 1}, 0.0), (CubicSchedule(0.1, 0.5, 0, 2), 0.1)]:
        cb = GradualPruneCallback(0.5, schedule=spec, strip_at_end=False)
        probe = Probe(cb)
        _model().fit(Data(), batch_size=16, epochs=3, verbose=0, callbacks=[cb, probe])
        assert probe.at_epoch[0] == pytest.approx(first, abs=0.01) and probe.at_epoch[-1] == pytest.approx(0.5, abs=0.01)


def test_frequency_counts_optimizer_updates_under_accumulation():
    model = _model()
    cb = GradualPruneCallback(0.6, schedule="linear", start_epoch=0, end_epoch=2, frequency=2, strip_at_end=False)
    probe = Probe(cb)
    # 64 images / batch 8 = 8 batches per epoch, accumulate 2 -> 4 optimizer updates per epoch
    model.fit(Data(), batch_size=8, epochs=3, verbose=0, callbacks=[cb, probe], accumulate_grad_batches=2)
    assert [s for s, _ in cb.history] == [2, 4, 6, 8]
    np.testing.assert_allclose([v for _, v in cb.history], [0.15, 0.3, 0.45, 0.6])
    assert probe.violations == 0


def test_masks_hold_with_adam_in_fit_and_strip_reports_size():
    model = _model("adam")
    cb = GradualPruneCallback(0.8, granularity="global", schedule="constant")
    probe = Probe(cb)
    model.fit(Data(), batch_size=16, epochs=2, verbose=0, callbacks=[cb, probe])
    assert probe.violations == 0 and probe.batches == 8
    assert cb.masker.masks == {}  # stripped
    s = cb.summary
    assert s["sparsity"] == pytest.approx(0.8, abs=1e-3)
    nonzero = sum(int((p.numpy() != 0).sum()) for p in model.network.parameters())
    assert s["nonzero_params"] == nonzero
    assert s["zip_bytes"] < s["state_dict_bytes"]
    assert Seam.get(model) is None


def test_reports_per_layer_sparsity_every_epoch():
    model = _model()
    seam = Seam.attach(model)
    records = []
    seam.reporter.add_sink(records.append)
    cb = GradualPruneCallback(0.5, schedule="linear", end_epoch=1)
    model.fit(Data(), batch_size=16, epochs=2, verbose=0, callbacks=[cb])
    layer = [r for r in records if r.tag == "prune/layer/conv2.weight"]
    assert [r.step for r in layer] == [4, 8] and layer[-1].value == pytest.approx(0.5)
    assert any(r.kind == "histogram" and r.tag == "prune/weights/fc.weight" for r in records)
    finals = {r.tag: r.value for r in records if r.tag.startswith("prune/final/")}
    assert finals["prune/final/sparsity"] == pytest.approx(0.5, abs=0.01) and finals["prune/final/zip_bytes"] > 0
    seam.release()


def _resume(path, probe_cls):
    model2 = _model(seed=7)
    seam2 = Seam.attach(model2)
    # (reset_optimizer: in one process the optimizer's accumulator names differ between the two models)
    model2.load(path, reset_optimizer=True)
    cb2 = GradualPruneCallback(0.75, start_epoch=0, end_epoch=3, granularity="global", strip_at_end=False)
    probe = probe_cls(cb2)
    model2.fit(Data(), batch_size=16, epochs=1, verbose=0, callbacks=[cb2, probe])
    seam2.release()
    return seam2, cb2, probe


class AtBegin(paddle.callbacks.Callback):
    """Listed after the pruner: sees its state once it is set up (at the first epoch begin)."""

    def __init__(self, pruner):
        super().__init__()
        self.pruner = pruner

    def on_epoch_begin(self, epoch, logs=None):
        if epoch:
            return
        m = self.pruner.masker
        self.step = self.pruner.global_step
        self.level = m.sparsity
        self.history = list(self.pruner.history)
        self.masks = {n: v.numpy() for n, v in m.masks.items()}
        self.zeros_ok = all((t.param.numpy()[self.masks[t.name] == 0] == 0).all() for t in m.targets)


def test_resume_restores_masks_and_schedule_position(tmp_path):
    model = _model()
    cb = GradualPruneCallback(0.75, start_epoch=0, end_epoch=3, granularity="global", strip_at_end=False)
    snapshots = {}

    class Snap(paddle.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            snapshots[epoch] = ({n: m.numpy() for n, m in cb.masker.masks.items()}, cb.masker.sparsity, list(cb.history))

    # Snap runs before ModelCheckpoint, so each snapshot is what checkpoint <epoch> holds
    model.fit(Data(), batch_size=16, epochs=4, verbose=0, callbacks=[cb, Snap()], save_dir=str(tmp_path))

    # after the ramp (checkpoint 3, step 16): masks come back exactly, nothing is recomputed
    _, cb2, probe = _resume(str(tmp_path / "3"), AtBegin)
    masks, level, history = snapshots[3]
    assert probe.step == 16 and probe.level == level == pytest.approx(0.75) and probe.zeros_ok
    assert probe.history == history == [(4, pytest.approx(0.5278, abs=1e-4)), (8, pytest.approx(0.7222, abs=1e-4)), (12, 0.75)]
    for n, m in masks.items():
        np.testing.assert_array_equal(probe.masks[n], m)

    # mid-ramp (checkpoint 1, step 8, masks of 0.528): the schedule goes on at step 8 -> 0.722, not from 0
    _, cb2, probe = _resume(str(tmp_path / "1"), AtBegin)
    masks, level, history = snapshots[1]
    assert probe.step == 8 and probe.level == pytest.approx(0.7222, abs=1e-4)
    assert probe.history == history + [(8, pytest.approx(0.7222, abs=1e-4))]
    for n, m in masks.items():
        assert ((m == 0) <= (probe.masks[n] == 0)).all()  # restored zeros kept, more added


def test_bn_scale_traces_the_first_batch():
    model = _model()
    cb = GradualPruneCallback(0.25, granularity="channel", criterion="bn_scale", schedule="constant", skip_last=True)
    model.fit(Data(), batch_size=16, epochs=1, verbose=0, callbacks=[cb])
    assert cb.history and cb.history[0][1] == 0.25
    for conv in (model.network.conv1, model.network.conv2):
        dead = (conv.weight.numpy().reshape(8, -1) == 0).all(axis=1)
        assert dead.sum() == 2


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"end_epoch \(1\) is before start_epoch \(2\)"):
        GradualPruneCallback(0.5, start_epoch=2, end_epoch=1)
    with pytest.raises(ValueError, match=r"final_sparsity.*\[0, 1\)"):
        GradualPruneCallback(1.0)
    with pytest.raises(ValueError, match=r"initial_sparsity.*\[0, 1\)"):
        GradualPruneCallback(0.5, initial_sparsity=-0.1)
    with pytest.raises(ValueError, match="unknown schedule 'quadratic'"):
        GradualPruneCallback(0.5, schedule="quadratic")
    with pytest.raises(ValueError, match="frequency"):
        GradualPruneCallback(0.5, frequency=0)
    with pytest.raises(ValueError, match="shrink=True.*channel"):
        GradualPruneCallback(0.5, shrink=True)
    with pytest.raises(ValueError, match="strip_at_end=True"):
        GradualPruneCallback(0.5, granularity="channel", shrink=True, strip_at_end=False)
    with pytest.raises(ValueError, match="exponential schedule needs initial > 0"):
        GradualPruneCallback(0.5, schedule="exponential")
    with pytest.raises(ValueError, match="unknown granularity"):
        GradualPruneCallback(0.5, granularity="block")
    with pytest.raises(ValueError, match="matches nothing"):
        _model().fit(Data(), batch_size=16, epochs=1, verbose=0, callbacks=[GradualPruneCallback(0.5, params=["x.*"])])


@pytest.mark.slow
def test_end_to_end_on_sample_data():
    """ResNet-20 (width 0.5) on the embedded Fashion-MNIST sample: learns while reaching 60% global sparsity."""
    from trainers.data import build_datasets
    from trainers.models import build_model

    train, test, classes = build_datasets("sample", augment=False, train_subset=2000)
    paddle.seed(0)
    net = build_model("resnet20", num_classes=classes, width=0.5)
    model = paddle.Model(net)
    opt = paddle.optimizer.Momentum(0.05, momentum=0.9, parameters=net.parameters(), weight_decay=5e-4)
    model.prepare(opt, nn.CrossEntropyLoss(), paddle.metric.Accuracy())
    before = model.evaluate(test, batch_size=250, verbose=0)["acc"]
    cb = GradualPruneCallback(0.6, granularity="global", end_epoch=2, skip_first=True)
    probe = Probe(cb)
    model.fit(train, batch_size=64, epochs=3, verbose=0, callbacks=[cb, probe])
    after = model.evaluate(test, batch_size=250, verbose=0)["acc"]
    assert probe.violations == 0
    assert cb.summary["sparsity"] == pytest.approx(0.6, abs=1e-3)
    assert after > before + 0.2 and after > 0.5, (before, after)
    assert cb.summary["zip_bytes"] < 0.8 * cb.summary["state_dict_bytes"]


def test_gradual_nm_in_fit_ends_fully_2_4():
    model = _model()
    cb = GradualPruneCallback(0.5, granularity="nm", n=2, m=4, schedule="linear", end_epoch=2, skip_first=True)
    probe = Probe(cb)
    model.fit(Data(), batch_size=16, epochs=3, verbose=0, callbacks=[cb, probe])
    np.testing.assert_allclose(probe.at_epoch, [0.0, 0.25, 0.5], atol=0.02)
    net = model.network
    assert is_nm_sparse(net.conv2.weight.numpy(), 2, 4, 1) and is_nm_sparse(net.fc.weight.numpy(), 2, 4, 0)
    assert probe.violations == 0


def test_visualdl_gets_per_layer_sparsity_each_epoch(tmp_path):
    from visualdl import LogReader

    from slim_callbacks.vdl import SlimVisualDL

    # the pruner is listed first so its train-end figures reach the writer before SlimVisualDL closes it
    cb = GradualPruneCallback(0.5, schedule="linear", end_epoch=1)
    _model().fit(Data(), batch_size=16, epochs=2, verbose=0, callbacks=[cb, SlimVisualDL(str(tmp_path))])
    reader = LogReader(file_path=str(next(tmp_path.glob("vdlrecords*"))))
    tags = reader.get_tags()
    assert {"prune/layer/conv1.weight", "prune/layer/fc.weight", "prune/sparsity", "prune/final/zip_bytes"} <= set(tags["scalar"])
    rows = reader.get_data("scalar", "prune/layer/conv2.weight")
    assert [r.id for r in rows] == [4, 8] and rows[-1].value == pytest.approx(0.5)
    assert "prune/weights/conv2.weight" in tags.get("histogram", [])
