"""Distillation: taps, losses, adapters, the DistillCallback loss stack, teacher safety, checkpoints."""

import warnings

import numpy as np
import paddle
import paddle.nn as nn
import pytest

from slim_callbacks.distill import DistillCallback, Distiller, FeatureTap, feature_loss, kd_loss
from slim_callbacks.distill.adapters import build_adapter
from slim_callbacks.distill.losses import attention_map
from slim_callbacks.schedule import LinearSchedule
from slim_callbacks.seam import Seam


class Net(nn.Layer):
    """stem (8x8) -> down (4x4) -> pool -> fc; ``c`` channels."""

    def __init__(self, c, classes=3, dropout=False):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2D(3, c, 3, padding=1), nn.BatchNorm2D(c), nn.ReLU())
        self.down = nn.Sequential(nn.Conv2D(c, c, 3, stride=2, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2D(1)
        self.drop = nn.Dropout(0.5) if dropout else None
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        x = self.pool(self.down(self.stem(x))).flatten(1)
        if self.drop is not None:
            x = self.drop(x)
        return self.fc(x)


def _nets(seed=0, s_classes=3, t_classes=3):
    paddle.seed(seed)
    return Net(4, s_classes), Net(8, t_classes)


def _model(student, lr=0.05):
    model = paddle.Model(student)
    model.prepare(paddle.optimizer.Momentum(lr, momentum=0.9, parameters=student.parameters()),
                  nn.CrossEntropyLoss(), paddle.metric.Accuracy())
    return model


def _batch(seed=1, n=6):
    rng = np.random.RandomState(seed)
    return rng.randn(n, 3, 8, 8).astype("float32"), rng.randint(0, 3, (n, 1)).astype("int64")


class _Data(paddle.io.Dataset):
    def __init__(self, n=24, seed=3):
        rng = np.random.RandomState(seed)
        self.x = rng.randn(n, 3, 8, 8).astype("float32")
        self.y = rng.randint(0, 3, (n, 1)).astype("int64")

    def __getitem__(self, i):
        return self.x[i], self.y[i]

    def __len__(self):
        return len(self.x)


def _start(cb, model):
    """Run the callback's train-begin without fit (to drive train_batch by hand)."""
    cb.set_model(model)
    cb.set_params({"steps": 4, "epochs": 1})
    cb.on_train_begin()
    cb.on_epoch_begin(0)  # slim callbacks set up at the first epoch begin (order contract)


def _step(model, x, y, update=True):
    """One train batch through hapi; returns the list of loss entries (task first)."""
    out = model.train_batch([x], [y], update=update)
    return out[0] if isinstance(out, tuple) else out


def _state(layer):
    return {k: v.numpy().copy() for k, v in layer.state_dict().items()}


# ------------------------------------------------------------------------------------------ losses
def test_feature_losses_match_numpy():
    rng = np.random.RandomState(0)
    s, t = rng.randn(2, 3, 4, 4).astype("float32"), rng.randn(2, 3, 4, 4).astype("float32")
    S, T = paddle.to_tensor(s), paddle.to_tensor(t)
    np.testing.assert_allclose(float(feature_loss("l2_sum", S, T)), ((s - t) ** 2).sum() / 2, rtol=1e-5)
    np.testing.assert_allclose(float(feature_loss("l2", S, T)), ((s - t) ** 2).mean(), rtol=1e-5)
    np.testing.assert_allclose(float(feature_loss("mse", S, T)), ((s - t) ** 2).mean(), rtol=1e-5)
    np.testing.assert_allclose(float(feature_loss("l1", S, T)), np.abs(s - t).mean(), rtol=1e-5)
    fs, ft = s.reshape(2, -1), t.reshape(2, -1)
    cos = (fs * ft).sum(1) / np.linalg.norm(fs, axis=1) / np.linalg.norm(ft, axis=1)
    np.testing.assert_allclose(float(feature_loss("cosine", S, T)), (1 - cos).mean(), rtol=1e-5)
    qs = (s**2).mean(1).reshape(2, -1)
    qt = (t**2).mean(1).reshape(2, -1)
    qs, qt = qs / np.linalg.norm(qs, axis=1, keepdims=True), qt / np.linalg.norm(qt, axis=1, keepdims=True)
    np.testing.assert_allclose(float(feature_loss("at", S, T)), ((qs - qt) ** 2).mean(), rtol=1e-5)
    # attention transfer ignores channel counts and is 0 for proportional maps
    wide = paddle.concat([S, S], axis=1)
    assert float(feature_loss("at", S, wide * 3.0)) < 1e-10
    assert attention_map(S).shape == [2, 16]
    with pytest.raises(ValueError, match="equal shapes"):
        feature_loss("mse", S, wide)
    with pytest.raises(ValueError, match="valid names"):
        feature_loss("l3", S, T)


def _kd_numpy(s, t, temp):
    def log_softmax(z):
        z = z / temp
        z = z - z.max(1, keepdims=True)
        return z - np.log(np.exp(z).sum(1, keepdims=True))

    lt, ls = log_softmax(t), log_softmax(s)
    return (np.exp(lt) * (lt - ls)).sum(1).mean() * temp**2


def test_kd_loss_is_kl_times_t_squared():
    rng = np.random.RandomState(0)
    s, t = rng.randn(5, 4).astype("float32"), rng.randn(5, 4).astype("float32")
    for temp in (1.0, 4.0):
        np.testing.assert_allclose(float(kd_loss(paddle.to_tensor(s), paddle.to_tensor(t), temp)),
                                   _kd_numpy(s, t, temp), rtol=1e-5)
    assert abs(float(kd_loss(paddle.to_tensor(s), paddle.to_tensor(s), 2.0))) < 1e-6
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(paddle.to_tensor(s), paddle.to_tensor(t), 0.0)


# ---------------------------------------------------------------------------------------- taps
def test_tap_refires_after_the_layer_under_its_name_is_swapped():
    net, _ = _nets()
    tap = FeatureTap(net, "down.0")
    x = paddle.to_tensor(_batch()[0])
    net(x)
    old = tap.layer
    assert tap.fired == 1
    paddle.seed(5)
    new = nn.Conv2D(4, 4, 3, stride=2, padding=1)
    net.down._sub_layers["0"] = new  # what an in-place layer swap (QAT) does
    net(x)
    assert tap.layer is new and tap.layer is not old and tap.reattached == 1 and tap.fired == 2
    captured = tap.output.numpy().copy()
    with paddle.no_grad():
        np.testing.assert_allclose(captured, new(net.stem(x)).numpy(), rtol=1e-5, atol=1e-6)
        fired = tap.fired
        # the old object's hook is gone: calling it no longer writes into the tap
        old(net.stem(x))
        assert tap.fired == fired
        tap.remove()
        net(x)
    assert tap.fired == fired and tap.output is None


def test_tap_survives_paddle_qat_quantize_inplace():
    from paddle.quantization import QAT, QuantConfig
    from paddle.quantization.quanters import FakeQuanterWithAbsMaxObserver

    net, _ = _nets()
    tap = FeatureTap(net, "down.0")
    quanter = FakeQuanterWithAbsMaxObserver(moving_rate=0.9)
    QAT(QuantConfig(activation=quanter, weight=quanter)).quantize(net, inplace=True)
    x = paddle.to_tensor(_batch()[0])
    net(x)
    assert type(tap.layer).__name__.startswith("Quanted") and tap.fired == 1


def test_distill_pair_on_a_leaf_keeps_working_after_qat_mid_training():
    from paddle.quantization import QAT, QuantConfig
    from paddle.quantization.quanters import FakeQuanterWithAbsMaxObserver

    x, y = _batch()
    student, teacher = _nets()
    model = _model(student)
    cb = DistillCallback(teacher, feature_pairs=[("down.0", "down.0")], feature_loss="mse")
    _start(cb, model)
    first = float(_step(model, x, y)[1])
    quanter = FakeQuanterWithAbsMaxObserver(moving_rate=0.9)
    QAT(QuantConfig(activation=quanter, weight=quanter)).quantize(student, inplace=True)
    tap = cb.distiller.student_taps.taps["down.0"]
    fired = tap.fired
    second = float(_step(model, x, y)[1])
    assert tap.reattached == 1 and tap.fired == fired + 1 and type(tap.layer).__name__ == "QuantedConv2D"
    assert np.isfinite(second) and second != first
    cb.on_train_end()


def test_bad_layer_name_lists_closest_names():
    student, teacher = _nets()
    with pytest.raises(KeyError, match=r"student has no layer named 'stm'.*'stem'"):
        Distiller(student, teacher, [("stm", "stem")])
    with pytest.raises(KeyError, match=r"teacher has no layer named 'down\.5'.*'down\.0'"):
        Distiller(student, teacher, [("stem", "down.5")])
    with pytest.raises(ValueError, match="pair"):
        DistillCallback(teacher, feature_pairs=[("stem",)])


# ------------------------------------------------------------------------------------- adapters
def test_adapter_shapes_and_refusals():
    a = build_adapter([2, 4, 8, 8], [2, 8, 4, 4], pair="a -> b")
    out = a(paddle.randn([2, 4, 8, 8]))
    assert out.shape == [2, 8, 4, 4] and a.bn is not None
    grow = build_adapter([2, 8, 2, 2], [2, 8, 4, 4], pair="a -> b")
    assert grow.proj is None and grow(paddle.randn([2, 8, 2, 2])).shape == [2, 8, 4, 4]
    assert build_adapter([2, 8, 4, 4], [2, 8, 4, 4], pair="a -> b") is None
    assert build_adapter([2, 4, 8, 8], [2, 8, 8, 8], pair="a -> b", channels_must_match=False) is None
    with pytest.raises(ValueError, match=r"a -> b.*spatial sizes differ"):
        build_adapter([2, 8, 8, 8], [2, 8, 4, 4], pair="a -> b", spatial="error")
    with pytest.raises(ValueError, match=r"channels differ.*adapters='none'"):
        build_adapter([2, 4, 8, 8], [2, 8, 8, 8], pair="a -> b", mode="none")
    with pytest.raises(ValueError, match="cannot align"):
        build_adapter([2, 4, 8, 8], [2, 8], pair="a -> b")
    with pytest.raises(ValueError, match="adapter expects 4 student channels"):
        a(paddle.randn([2, 3, 8, 8]))


def test_spatial_mismatch_refused_or_resized_in_a_step():
    x, y = _batch()
    student, teacher = _nets()
    model = _model(student)
    cb = DistillCallback(teacher, feature_pairs=[("stem", "down")], spatial="error")
    _start(cb, model)
    with pytest.raises(ValueError, match=r"stem -> down.*spatial sizes differ"):
        _step(model, x, y)
    student, teacher = _nets()
    model = _model(student)
    cb = DistillCallback(teacher, feature_pairs=[("stem", "down")], spatial="resize")
    _start(cb, model)
    losses = _step(model, x, y)
    assert len(losses) == 2 and np.isfinite(float(losses[1]))


# ------------------------------------------------------------------------------ combined loss
def test_combined_loss_equals_hand_written():
    x, y = _batch()
    student, teacher = _nets()
    model = _model(student)
    cb = DistillCallback(teacher, feature_pairs=[["stem", "stem"], ["down", "down"]], feature_loss="mse",
                         pair_weights=[0.5, 2.0], soft_label_weight=0.7, temperature=3.0, task_loss_weight=0.4)
    _start(cb, model)
    seam = cb.seam
    losses = _step(model, x, y, update=False)
    assert seam.loss_names() == ["task", "distill/pair0:stem-stem", "distill/pair1:down-down", "distill/kd",
                                 "distill/task_scale"]
    trainable = [p for p in student.parameters() if not p.stop_gradient]
    seam_grads = [p.grad.numpy().copy() for p in trainable]
    adapters = cb.adapters
    assert sorted(adapters) == ["pair0:stem-stem", "pair1:down-down"]  # 4 -> 8 channels on both pairs
    student.clear_gradients()
    for a in adapters.values():
        a.clear_gradients()

    # hand-written, independent of the taps: recompute every feature explicitly
    xt = paddle.to_tensor(x)
    s_stem = student.stem(xt)
    s_down = student.down(s_stem)
    logits = student.fc(student.pool(s_down).flatten(1))
    with paddle.no_grad():
        t_stem = teacher.stem(xt)
        t_down = teacher.down(t_stem)
        t_logits = teacher.fc(teacher.pool(t_down).flatten(1))
    task = nn.functional.cross_entropy(logits, paddle.to_tensor(y))
    p0 = ((adapters["pair0:stem-stem"](s_stem) - t_stem) ** 2).mean()
    p1 = ((adapters["pair1:down-down"](s_down) - t_down) ** 2).mean()
    kd = _kd_numpy(logits.numpy(), t_logits.numpy(), 3.0)
    expected = [float(task), 0.5 * float(p0), 2.0 * float(p1), 0.7 * kd, (0.4 - 1.0) * float(task)]
    np.testing.assert_allclose([float(v) for v in losses], expected, rtol=1e-4, atol=1e-6)
    total = 0.4 * task + 0.5 * p0 + 2.0 * p1 + 0.7 * kd_loss(logits, t_logits, 3.0)
    total.backward()
    for a, b in zip(seam_grads, [p.grad.numpy() for p in trainable]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    cb.on_train_end()


def test_weight_schedules_and_pure_distillation():
    x, y = _batch()
    student, teacher = _nets()
    model = _model(student, lr=0.0)
    ramp = LinearSchedule(initial=0.0, final=1.0, start=0, end=2, unit="step")
    cb = DistillCallback(teacher, soft_label_weight=ramp, task_loss_weight={"kind": "constant", "final": 0.0})
    _start(cb, model)
    got = [[float(v) for v in _step(model, x, y)] for _ in range(3)]
    kd = _kd_numpy(student(paddle.to_tensor(x)).numpy(), teacher(paddle.to_tensor(x)).numpy(), 4.0)
    np.testing.assert_allclose([g[1] for g in got], [0.0, 0.5 * kd, kd], rtol=1e-4, atol=1e-7)
    for task, _, scale in got:  # task_loss_weight 0: the extra term cancels the task loss exactly
        np.testing.assert_allclose(scale, -task, rtol=1e-6)
    with pytest.raises(ValueError, match="soft_label_weight"):
        DistillCallback(teacher, soft_label_weight={"kind": "cubic", "bogus": 1})
    with pytest.raises(ValueError, match="pair_weights"):
        DistillCallback(teacher, feature_pairs=[("stem", "stem")], pair_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="feature_pairs or a soft_label_weight"):
        DistillCallback(teacher)


def test_reports_unweighted_losses_and_weights():
    x, y = _batch()
    student, teacher = _nets()
    model = _model(student)
    cb = DistillCallback(teacher, feature_pairs=[("down", "down")], soft_label_weight=0.5)
    _start(cb, model)
    records = []
    cb.seam.reporter.add_sink(records.append)
    losses = _step(model, x, y)
    tags = {r.tag: r.value for r in records}
    assert tags["distill/weight/kd"] == 0.5 and tags["distill/weight/pair0:down-down"] == 1.0
    assert tags["distill/weight/task"] == 1.0
    np.testing.assert_allclose(tags["distill/loss/kd"] * 0.5, float(losses[2]), rtol=1e-5)
    np.testing.assert_allclose(tags["distill/loss/pair0:down-down"], float(losses[1]), rtol=1e-5)
    np.testing.assert_allclose(tags["distill/loss/task"], float(losses[0]), rtol=1e-5)
    assert {r.step for r in records} == {0}


# ---------------------------------------------------------------------------------- bad input
def test_teacher_with_other_classes_and_soft_labels_is_refused():
    x, y = _batch()
    student, teacher = _nets(t_classes=5)
    model = _model(student)
    cb = DistillCallback(teacher, soft_label_weight=1.0)
    _start(cb, model)
    with pytest.raises(ValueError, match="student has 3 outputs, the teacher 5"):
        _step(model, x, y)
    # features only: fine
    student, teacher = _nets(t_classes=5)
    model = _model(student)
    _start(DistillCallback(teacher, feature_pairs=[("down", "down")]), model)
    assert len(_step(model, x, y)) == 2


def test_teacher_in_training_mode_with_dropout_warns_and_is_put_in_eval():
    paddle.seed(0)
    student, teacher = Net(4), Net(8, dropout=True)
    teacher.train()
    with pytest.warns(UserWarning, match="Dropout"):
        d = Distiller(student, teacher, [("down", "down")])
    assert not teacher.training
    x = paddle.to_tensor(_batch()[0])
    a, _ = d.teacher_forward([x])
    b, _ = d.teacher_forward([x])
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Distiller(Net(4), Net(8), [("down", "down")])  # no dropout: no warning


def test_teacher_inside_student_and_bad_teacher_types_are_refused():
    student, teacher = _nets()
    student.teacher = teacher
    with pytest.raises(ValueError, match="sublayer of the student"):
        Distiller(student, teacher, [("down", "down")])
    with pytest.raises(TypeError, match="teacher must be"):
        DistillCallback(42, soft_label_weight=1.0)
    with pytest.raises(FileNotFoundError, match="nope"):
        DistillCallback("/tmp/nope", soft_label_weight=1.0, teacher_arch="resnet20")
    with pytest.raises(ValueError, match="valid names"):
        DistillCallback(Net(8), feature_loss="l3", soft_label_weight=1.0)


def test_teacher_from_model_and_from_parameter_file(tmp_path):
    pytest.importorskip("trainers.models")
    from trainers.models import build_model

    paddle.seed(0)
    teacher_net = build_model("resnet20", num_classes=4, width=0.25)
    path = str(tmp_path / "teacher")
    paddle.save(teacher_net.state_dict(), path + ".pdparams")
    cb = DistillCallback(path, soft_label_weight=1.0, teacher_arch="resnet20", teacher_width=0.25)
    assert cb.teacher.fc.weight.shape == [16, 4]
    np.testing.assert_array_equal(cb.teacher.conv1.weight.numpy(), teacher_net.conv1.weight.numpy())
    with pytest.raises(ValueError, match="does not match architecture 'resnet20'"):
        DistillCallback(path, soft_label_weight=1.0, teacher_arch="resnet20", teacher_width=0.5)
    with pytest.raises(ValueError, match="teacher_arch"):
        DistillCallback(path, soft_label_weight=1.0)
    assert DistillCallback(paddle.Model(teacher_net), soft_label_weight=1.0).teacher is teacher_net


def test_pure_core_drives_a_hand_written_loop():
    from slim_callbacks.distill import BatchMixer

    student, teacher = _nets()
    d = Distiller(student, teacher, [("down", "down")], feature_loss="mse")
    x, y = _batch()
    d.probe(paddle.to_tensor(x))
    assert list(d.adapters) == ["pair0:down-down"] and d.parameters()
    opt = paddle.optimizer.Momentum(0.05, parameters=student.parameters() + d.parameters())
    mixer = BatchMixer("cutmix", 1.0, seed=0)
    w0 = d.parameters()[0].numpy().copy()
    for _ in range(2):
        r = mixer.mix(paddle.to_tensor(x))
        logits = student(r.inputs)
        losses = d.losses(logits, r.inputs)
        ce = nn.functional.cross_entropy
        yt = paddle.to_tensor(y)
        task = r.lam * ce(logits, yt) + (1 - r.lam) * ce(logits, paddle.gather(yt, paddle.to_tensor(r.perm)))
        (task + losses["pair0:down-down"] + losses["kd"]).backward()
        opt.step()
        opt.clear_grad()
    assert not np.array_equal(w0, d.parameters()[0].numpy())


# ------------------------------------------------------------------------------- training runs
def test_fit_leaves_teacher_unchanged_and_out_of_the_checkpoint(tmp_path):
    student, teacher = _nets()
    model = _model(student)
    t_before, s_before = _state(teacher), _state(student)
    cb = DistillCallback(teacher, feature_pairs=[("down", "down")], soft_label_weight=1.0, mixing="mixup")
    model.fit(_Data(), epochs=2, batch_size=8, verbose=0, callbacks=[cb], save_dir=str(tmp_path))
    for k, v in _state(teacher).items():
        np.testing.assert_array_equal(v, t_before[k], err_msg=k)
    assert any(not np.array_equal(v, s_before[k]) for k, v in _state(student).items())
    saved = paddle.load(str(tmp_path / "0.pdparams"))
    assert sorted(saved) == sorted(student.state_dict())
    assert not teacher.training


def test_adapters_train_and_round_trip_through_save_and_load(tmp_path):
    student, teacher = _nets()
    model = _model(student)
    seam = Seam.attach(model)  # as the trainer does: the seam outlives one fit
    cb = DistillCallback(teacher, feature_pairs=[("down", "down")])
    initial = {}
    register = cb._register_adapter

    def spy(seam_, name, layer):  # snapshot the adapter as built, before any update
        initial.update(_state(layer))
        register(seam_, name, layer)

    cb._register_adapter = spy
    model.fit(_Data(), epochs=1, batch_size=8, verbose=0, callbacks=[cb])
    adapter = cb.adapters["pair0:down-down"]
    assert "distill/pair0:down-down" in seam.extra_layers
    assert id(adapter.proj.weight) in {id(p) for p in seam.optimizer._parameter_list}  # joined the optimizer
    weights = _state(adapter)
    assert not np.array_equal(weights["proj.weight"], initial["proj.weight"])  # trained
    assert adapter.proj.weight.grad is None or not adapter.proj.weight.grad.numpy().any()  # cleared after update
    path = str(tmp_path / "ckpt")
    model.save(path)
    slim = paddle.load(path + ".slim")
    assert set(slim["extras"]["distill/pair0:down-down"]) == set(weights)
    assert sorted(paddle.load(path + ".pdparams")) == sorted(student.state_dict())  # not in the student
    assert any(k.startswith("extra:distill/pair0:down-down.proj.weight") for k in paddle.load(path + ".pdopt"))

    # a fresh run loads the checkpoint; the adapter, built at the first step, gets the saved weights
    student2, teacher2 = _nets(seed=9)
    model2 = _model(student2)
    seam2 = Seam.attach(model2)
    model2.load(path)
    cb2 = DistillCallback(teacher2, feature_pairs=[("down", "down")])
    _start(cb2, model2)
    x, y = _batch()
    _step(model2, x, y, update=False)
    adapter2 = cb2.adapters["pair0:down-down"]
    assert adapter2 is not adapter
    np.testing.assert_array_equal(adapter2.proj.weight.numpy(), weights["proj.weight"])
    # the optimizer state comes back too: Momentum applies v = 0.9 v_saved + g, w -= lr v
    grad = adapter2.proj.weight.grad.numpy().copy()
    _step(model2, x, y)  # same batch: the accumulated gradient is 2 g
    v_saved = [np.asarray(v) for k, v in paddle.load(path + ".pdopt").items()
               if k.startswith("extra:distill/pair0:down-down.proj.weight_velocity")][0]
    expected = weights["proj.weight"] - 0.05 * (0.9 * v_saved + 2 * grad)
    np.testing.assert_allclose(adapter2.proj.weight.numpy(), expected, rtol=1e-4, atol=1e-6)
    cb2.on_train_end()
    seam.release()
    seam2.release()
    assert id(adapter.proj.weight) not in {id(p) for p in model._optimizer._parameter_list}  # gone with the seam


@pytest.mark.slow
def test_distilled_student_learns_on_the_embedded_sample():
    """~60 s: a resnet20-w0.5 teacher (1 epoch) taught to a resnet20-w0.25 student (1 epoch) with attention
    transfer on two stages, soft labels and MixUp. 3000 sample images, 10 classes (chance 0.1)."""
    pytest.importorskip("trainers.data")
    from trainers.data import build_datasets
    from trainers.models import build_model

    train, test, classes = build_datasets("sample", augment=False, train_subset=3000)
    paddle.seed(0)
    teacher = paddle.Model(build_model("resnet20", num_classes=classes, width=0.5))
    teacher.prepare(paddle.optimizer.Adam(2e-3, parameters=teacher.parameters()), nn.CrossEntropyLoss(),
                    paddle.metric.Accuracy())
    teacher.fit(train, epochs=1, batch_size=64, verbose=0)
    teacher_state = _state(teacher.network)
    paddle.seed(1)
    student_net = build_model("resnet20", num_classes=classes, width=0.25)
    student = paddle.Model(student_net)
    student.prepare(paddle.optimizer.Adam(2e-3, parameters=student_net.parameters()), nn.CrossEntropyLoss(),
                    paddle.metric.Accuracy())
    before = student.evaluate(test, batch_size=250, verbose=0)["acc"]
    cb = DistillCallback(teacher, feature_pairs=[("layer2", "layer2"), ("layer3", "layer3")], feature_loss="at",
                         pair_weights=[100.0, 100.0], soft_label_weight=0.5, mixing="mixup")
    student.fit(train, epochs=1, batch_size=64, verbose=0, callbacks=[cb])
    acc = student.evaluate(test, batch_size=250, verbose=0)["acc"]
    assert acc > 0.2 and acc > before + 0.08, (before, acc)
    for k, v in _state(teacher.network).items():
        np.testing.assert_array_equal(v, teacher_state[k], err_msg=k)
