"""Channel pruning that removes coupled groups inside model.fit (GroupMasker, GradualPruneCallback shrink=...).

The masks are chosen per coupled group of the traced dependency graph, so residual stages shrink too,
removing them changes no output, the optimizer keeps training the sliced parameters, checkpoints carry
the architecture, and callbacks that fix the shapes or read channels are respected.
"""

import os

import numpy as np
import paddle
import paddle.vision.models as vision_models
import pytest
from paddle import nn

from slim_callbacks import DistillCallback, GradualPruneCallback, QATCallback
from slim_callbacks.prune.group_masks import GroupMasker
from slim_callbacks.quant import PTQCallback, export_int8
from slim_callbacks.seam import Seam
from trainers.models import build_model

SHAPE = [1, 3, 16, 16]


class Data(paddle.io.Dataset):
    """4 classes: which quadrant of a 16x16 image is brightest."""

    def __init__(self, n=96, seed=0):
        rng = np.random.default_rng(seed)
        self.x = rng.normal(0, 0.3, (n, 3, 16, 16)).astype("float32")
        self.y = rng.integers(0, 4, (n, 1)).astype("int64")
        for i, c in enumerate(self.y[:, 0]):
            r, q = divmod(int(c), 2)
            self.x[i, :, r * 8:(r + 1) * 8, q * 8:(q + 1) * 8] += 1.0

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def _model(width=0.5, seed=0, lr=0.05):
    paddle.seed(seed)
    with paddle.utils.unique_name.guard():
        net = build_model("resnet20", 4, width=width)
    model = paddle.Model(net)
    opt = paddle.optimizer.Momentum(lr, momentum=0.9, parameters=net.parameters(), weight_decay=5e-4)
    model.prepare(opt, nn.CrossEntropyLoss(), paddle.metric.Accuracy())
    return model


def _eval_out(net, x):
    net.eval()
    with paddle.no_grad():
        return net(x).numpy()


def _randomize_bn(net, seed=0):
    rng = np.random.default_rng(seed)
    for layer in net.sublayers():
        if isinstance(layer, nn.BatchNorm2D):
            n = layer.weight.shape[0]
            layer._mean.set_value(rng.normal(0, 0.1, n).astype("float32"))
            layer._variance.set_value(rng.uniform(0.5, 1.5, n).astype("float32"))
            layer.bias.set_value(rng.normal(0, 0.1, n).astype("float32"))


@pytest.mark.parametrize("arch", ["resnet20", "mobilenet_v2", "vision_resnet18"])
def test_group_masks_are_exact_and_shrink_changes_no_output(arch):
    paddle.seed(0)
    net = vision_models.resnet18(num_classes=10) if arch == "vision_resnet18" else build_model(arch, 10, width=0.5)
    _randomize_bn(net)
    x = paddle.randn([2, 3, 32, 32])
    gm = GroupMasker(net, criterion="l2", example_input=x)
    gm.update(0.25)
    first = {k: v.copy() for k, v in gm.kept.items()}
    gm.update(0.5)
    for gi, idx in first.items():  # masked at 0.25 -> still masked at 0.5
        assert set(gm.kept[gi]) <= set(idx)
    masked = _eval_out(net, x)
    params_before = sum(int(np.prod(p.shape)) for p in net.parameters())
    result = gm.shrink()
    np.testing.assert_allclose(_eval_out(net, x), masked, atol=1e-4, rtol=1e-4)
    assert result.macs_after < 0.5 * result.macs_before
    assert sum(int(np.prod(p.shape)) for p in net.parameters()) < params_before
    assert not gm.masks and not gm.needs_trace  # re-traced on the smaller network
    # ratios are fractions of the ORIGINAL channels: asking again for 0.5 removes nothing more
    assert gm.compute_kept(0.5) == {}


def test_residual_groups_are_masked_together():
    net = build_model("resnet20", 10, width=0.5)
    gm = GroupMasker(net, example_input=paddle.zeros(SHAPE))
    gm.update(0.5)
    # stage 1 residual group: the stem conv and every block's second conv share one channel set
    dead = [np.where((getattr_path(net, name).weight.numpy().reshape(8, -1) == 0).all(1))[0]
            for name in ("conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2")]
    assert len(dead[0]) == 4 and all(np.array_equal(d, dead[0]) for d in dead)
    # ... and the consumers' input slices are masked too (layer1.1.conv1 reads the residual stream)
    w = net.layer1[1].conv1.weight.numpy()
    assert (w[:, dead[0]] == 0).all() and (np.abs(w).sum((0, 2, 3)) > 0).sum() == 4


def getattr_path(net, name):
    return dict(net.named_sublayers())[name]


def test_end_mode_in_fit_removes_the_masked_groups_exactly():
    model = _model()
    net = model.network
    x = paddle.to_tensor(Data(8, seed=1).x)
    seen = {}

    class BeforeShrink(paddle.callbacks.Callback):  # listed first: its on_train_end runs before the pruner's
        def on_train_end(self, logs=None):
            seen["out"] = _eval_out(net, x)

    cb = GradualPruneCallback(0.5, granularity="channel", schedule="constant", shrink=True, input_shape=SHAPE)
    model.fit(Data(), batch_size=16, epochs=2, verbose=0, callbacks=[BeforeShrink(), cb])
    np.testing.assert_allclose(_eval_out(net, x), seen["out"], atol=1e-4, rtol=1e-4)
    assert net.layer1[0].conv2.weight.shape[0] == 4  # the residual stage shrank (8 -> 4 channels)
    assert net.conv1.weight.shape[0] == 4 and net.fc.weight.shape == [16, 4]
    macs = cb.summary["macs_per_image"]
    assert macs[1] < 0.35 * macs[0]
    velocity = model._optimizer._accumulators["velocity"]
    for p in net.parameters():
        if p.name in velocity:
            assert velocity[p.name].shape == p.shape, p.name


def test_step_mode_trains_on_the_shrinking_network():
    model = _model()
    net = model.network
    sizes, losses = [], []

    class Probe(paddle.callbacks.Callback):  # listed after the pruner: sees the network of each epoch
        def on_epoch_begin(self, epoch, logs=None):
            sizes.append(sum(int(np.prod(p.shape)) for p in net.parameters()))
            losses.append([])

        def on_train_batch_end(self, step, logs=None):
            losses[-1].append(float(np.asarray(logs["loss"]).ravel()[0]))

    cb = GradualPruneCallback(0.5, granularity="channel", schedule="linear", end_epoch=2, shrink="step")
    model.fit(Data(), batch_size=16, epochs=5, verbose=0, callbacks=[cb, Probe()])
    assert sizes[0] > sizes[1] > sizes[2] == sizes[3] == sizes[4], sizes
    assert len(cb.shrinks) == 2 and [s["global_step"] for s in cb.shrinks] == [6, 12]
    assert np.mean(losses[-1]) < np.mean(losses[0])  # training went on after each removal
    acc = model.evaluate(Data(), batch_size=32, verbose=0)["acc"]
    assert acc > 0.5
    velocity = model._optimizer._accumulators["velocity"]
    assert all(velocity[p.name].shape == p.shape for p in net.parameters() if p.name in velocity)


def test_shrunk_checkpoint_round_trip_export_and_clear_error(tmp_path):
    model = _model()
    seam = Seam.attach(model)  # held: model.save after fit still writes the architecture
    cb = GradualPruneCallback(0.5, granularity="channel", schedule="constant", shrink=True, input_shape=SHAPE)
    model.fit(Data(), batch_size=16, epochs=1, verbose=0, callbacks=[cb])
    path = str(tmp_path / "shrunk")
    model.save(path)
    x = paddle.to_tensor(Data(8, seed=2).x)
    want = _eval_out(model.network, x)

    fresh = _model(seed=3)
    Seam.attach(fresh)  # as a fresh process would: the seam first, then the load
    fresh.load(path)
    np.testing.assert_allclose(_eval_out(fresh.network, x), want, atol=1e-5)
    assert fresh.network.layer1[0].conv2.weight.shape[0] == 4

    paddle.jit.save(fresh.network, str(tmp_path / "infer"), input_spec=[paddle.static.InputSpec([None, 3, 16, 16])])
    loaded = paddle.jit.load(str(tmp_path / "infer"))
    np.testing.assert_allclose(loaded(x).numpy(), want, atol=1e-5)

    os.remove(path + ".slim")  # without the architecture: a clear error, not a shape crash
    plain = _model(seed=4)
    Seam.attach(plain)
    with pytest.raises(ValueError, match="channel-pruned"):
        plain.load(path)
    seam.release()


def test_callbacks_that_fix_shapes_are_checked_before_training():
    for other, shrink, message in [
        (QATCallback(start_epoch=0), True, "QATCallback fixes the network's shapes from epoch 0"),
        (QATCallback(start_epoch=1), "step", "until epoch 2"),
        (PTQCallback(Data(), batches=1), True, "PTQCallback"),
    ]:
        model = _model()
        before = model.network.conv1.weight.numpy().copy()
        cb = GradualPruneCallback(0.5, granularity="channel", schedule="linear", end_epoch=2, shrink=shrink,
                                  input_shape=SHAPE)
        with pytest.raises(ValueError, match=message):
            model.fit(Data(), batch_size=16, epochs=3, verbose=0, callbacks=[cb, other])
        np.testing.assert_array_equal(model.network.conv1.weight.numpy(), before)  # no step was taken


@pytest.mark.parametrize("arch", ["resnet20", "mobilenet_v2"])
def test_keep_residual_prunes_only_inside_blocks(arch):
    from slim_callbacks.prune.depgraph import build_dependency_graph
    from slim_callbacks.prune.shrink import is_residual

    paddle.seed(0)
    model = paddle.Model(build_model(arch, 4, width=0.5))
    model.prepare(paddle.optimizer.Momentum(0.05, parameters=model.network.parameters()), nn.CrossEntropyLoss())
    dense = build_dependency_graph(model.network, None, SHAPE)
    streams = {g.layer_names()[0]: g.size for g in dense.groups if g.prunable and is_residual(g)}
    assert streams  # both architectures add residual branches
    cb = GradualPruneCallback(0.5, granularity="channel", schedule="constant", shrink=True, keep_residual=True,
                              input_shape=SHAPE)
    model.fit(Data(32), batch_size=16, epochs=1, verbose=0, callbacks=[cb])
    after = build_dependency_graph(model.network, None, SHAPE)
    sizes = {g.layer_names()[0]: g.size for g in after.groups if g.layer_names()}
    assert all(sizes[name] == size for name, size in streams.items())  # every residual stream whole
    assert cb.summary["macs_per_image"][1] < 0.7 * cb.summary["macs_per_image"][0]  # blocks did shrink


def test_shrink_then_qat_then_int8_export(tmp_path):
    model = _model()
    cb = GradualPruneCallback(0.5, granularity="channel", schedule="constant", shrink="step", input_shape=SHAPE)
    qat = QATCallback(start_epoch=1)
    model.fit(Data(), batch_size=16, epochs=2, verbose=0, callbacks=[qat, cb])
    assert len(cb.shrinks) == 1 and cb.shrinks[0]["global_step"] == 0  # constant: removed before the first step
    info = export_int8(model.network, str(tmp_path / "int8"), [None, 3, 16, 16])
    assert os.path.exists(str(tmp_path / "int8") + ".pdmodel") and info


def test_distillation_taps_keep_their_channels():
    paddle.seed(5)
    teacher = build_model("resnet20", 4, width=0.5)
    teacher.eval()
    model = _model()
    cb = GradualPruneCallback(0.5, granularity="channel", schedule="constant", shrink=True, input_shape=SHAPE)
    distill = DistillCallback(teacher, feature_pairs=[("layer2", "layer2")], feature_loss="mse", adapters="auto")
    model.fit(Data(), batch_size=16, epochs=1, verbose=0, callbacks=[cb, distill])
    net = model.network
    assert net.layer2[0].conv2.weight.shape[0] == 16  # the tapped residual stage stays whole
    assert net.layer1[0].conv2.weight.shape[0] == 4 and net.layer2[0].conv1.weight.shape[0] == 8


def test_bad_shrink_arguments():
    with pytest.raises(ValueError, match="shrink must be"):
        GradualPruneCallback(0.5, granularity="channel", shrink="later")
    with pytest.raises(ValueError, match="params and layer_types do not apply"):
        GradualPruneCallback(0.5, granularity="channel", shrink=True, params=[".*conv.*"])
    with pytest.raises(ValueError, match="round_to, ignored_layers and keep_residual"):
        GradualPruneCallback(0.5, granularity="channel", round_to=8)
    model = _model()
    cb = GradualPruneCallback(0.5, granularity="channel", shrink=True, ignored_layers=["layer9"], input_shape=SHAPE)
    with pytest.raises(ValueError, match="layer9"):
        model.fit(Data(), batch_size=16, epochs=1, verbose=0, callbacks=[cb])


def _shrinking_trainer(log_dir, extra=()):
    from test_compose import stack_trainer

    return stack_trainer(log_dir, lambda teacher: [
        DistillCallback(teacher, feature_pairs=[("layer3", "layer3")], feature_loss="mse", soft_label_weight=0.5),
        GradualPruneCallback(0.5, granularity="channel", schedule="linear", end_epoch=2, shrink="step"),
        QATCallback(start_epoch=2),
    ], extra)


def test_resume_after_a_shrink_matches_an_uninterrupted_run(tmp_path):
    """Killed after epoch 2 (two removals done, sliced momentum in the checkpoint), resumed into a
    freshly built dense student: same final weights as the uninterrupted run."""
    from test_compose import KilledAfter

    whole = _shrinking_trainer(tmp_path / "whole")
    whole.fit()
    _shrinking_trainer(tmp_path / "cut", extra=[KilledAfter(2)]).fit()
    resumed = _shrinking_trainer(tmp_path / "cut")
    resumed.fit(resume=str(tmp_path / "cut" / "checkpoints" / "latest"))
    sw, sr = whole.network.state_dict(), resumed.network.state_dict()
    assert sw.keys() == sr.keys()
    assert sw["layer1.0.conv1.weight"].shape[0] == 2  # width 0.25: 4 -> 2 channels
    for key in sw:
        np.testing.assert_allclose(sw[key].numpy(), sr[key].numpy(), atol=1e-6, err_msg=key)
    final = tmp_path / "whole" / "checkpoints" / "final"
    assert paddle.load(str(final) + ".slim")["architecture"]["layers"]["conv1"]["params"]["weight"][0] == 2
    with pytest.raises(ValueError, match="holds no training state"):  # 'final' is for loading, not resuming
        _shrinking_trainer(tmp_path / "again").fit(resume=str(final))
