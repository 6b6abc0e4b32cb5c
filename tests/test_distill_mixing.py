"""CutMix / MixUp: lambda and labels, the seam transform, eval untouched, teacher sees the mixed batch, RNG state."""

import numpy as np
import paddle
import paddle.nn as nn
import pytest

from slim_callbacks.distill import BatchMixer, CutMix, DistillCallback, MixingCallback, MixUp, mixer_from_config
from slim_callbacks.seam import Seam, StepContext


def _images(n=8, seed=0):
    rng = np.random.RandomState(seed)
    return rng.randn(n, 3, 10, 12).astype("float32"), rng.randint(0, 5, (n, 1)).astype("int64")


def test_cutmix_pastes_a_box_and_lambda_is_one_minus_box_area():
    x, _ = _images()
    mixer = CutMix(alpha=1.0, seed=3)
    seen_partial = False
    for _ in range(20):
        r = mixer.mix(paddle.to_tensor(x))
        y1, y2, x1, x2 = r.box
        assert 0 <= y1 <= y2 <= 10 and 0 <= x1 <= x2 <= 12
        area = (y2 - y1) * (x2 - x1)
        assert r.lam == pytest.approx(1.0 - area / 120.0)
        inside = np.zeros((10, 12), bool)
        inside[y1:y2, x1:x2] = True
        out = r.inputs.numpy()
        np.testing.assert_array_equal(out[:, :, inside], x[r.perm][:, :, inside])
        np.testing.assert_array_equal(out[:, :, ~inside], x[:, :, ~inside])
        assert sorted(r.perm) == list(range(8))
        seen_partial |= 0 < area < 120
    assert seen_partial


def test_cutmix_box_is_clipped_at_the_border():
    from slim_callbacks.distill.mixing import cutmix_box

    class Corner:  # centre drawn at (0, 0)
        def integers(self, lo, hi):
            return 0

    y1, y2, x1, x2 = cutmix_box(10, 10, 0.75, Corner())  # side ratio 0.5 -> a 5x5 box centred at a corner
    assert (y1, y2, x1, x2) == (0, 2, 0, 2)


def test_mixup_blends_with_the_drawn_lambda():
    x, _ = _images()
    mixer = MixUp(alpha=0.4, seed=1)
    r = mixer.mix(paddle.to_tensor(x))
    assert r.kind == "mixup" and 0.0 <= r.lam <= 1.0
    np.testing.assert_allclose(r.inputs.numpy(), r.lam * x + (1 - r.lam) * x[r.perm], rtol=1e-5, atol=1e-6)
    # same seed, same draws; another seed differs
    again = MixUp(alpha=0.4, seed=1).mix(paddle.to_tensor(x))
    assert again.lam == r.lam and list(again.perm) == list(r.perm)
    assert MixUp(alpha=0.4, seed=2).mix(paddle.to_tensor(x)).lam != r.lam


def test_apply_sets_mixed_labels_and_keeps_clean_labels():
    x, y = _images()
    mixer = BatchMixer("cutmix", 1.0, seed=0)
    labels = paddle.to_tensor(y)
    ctx = StepContext("train", [paddle.to_tensor(x)], [labels])
    mixer.apply(ctx)
    info = ctx.info["mixing"]
    assert ctx.labels[0] is labels
    (w0, ys0), (w1, ys1) = ctx.label_mixture
    assert w0 == pytest.approx(info["lam"]) and w1 == pytest.approx(1 - info["lam"])
    np.testing.assert_array_equal(ys0[0].numpy(), y)
    np.testing.assert_array_equal(ys1[0].numpy(), y[info["perm"]])
    with pytest.raises(RuntimeError, match="already mixed"):
        mixer.apply(ctx)


def test_both_mode_follows_switch_prob_and_prob_zero_never_mixes():
    x = paddle.to_tensor(_images()[0])
    assert {BatchMixer("both", 1.0, switch_prob=1.0).mix(x).kind for _ in range(5)} == {"cutmix"}
    assert {BatchMixer("both", 1.0, switch_prob=0.0).mix(x).kind for _ in range(5)} == {"mixup"}
    kinds = [m.kind for m in (lambda b: [b.mix(x) for _ in range(40)])(BatchMixer("both", 1.0, seed=0))]
    assert set(kinds) == {"cutmix", "mixup"}
    r = BatchMixer("mixup", 1.0, prob=0.0).mix(x)
    assert r.kind == "none" and r.lam == 1.0 and r.inputs is x


def test_bad_mixing_arguments_are_refused():
    for bad in (0, -1.0, "1"):
        with pytest.raises(ValueError, match="alpha must be a number > 0"):
            CutMix(alpha=bad)
    with pytest.raises(ValueError, match="mixup_alpha"):
        BatchMixer("both", 1.0, mixup_alpha=0.0)
    with pytest.raises(ValueError, match=r"mixing mode 'cutout'.*'cutmix'"):
        BatchMixer("cutout")
    with pytest.raises(ValueError, match="switch_prob"):
        BatchMixer("both", switch_prob=1.5)
    with pytest.raises(ValueError, match=r"unknown mixing key\(s\) \['alfa'\]"):
        mixer_from_config({"mode": "mixup", "alfa": 1.0})
    with pytest.raises(ValueError, match="alpha"):
        MixingCallback("mixup", alpha=0.0)
    with pytest.raises(ValueError, match="CutMix needs image batches"):
        CutMix().mix(paddle.ones([4, 3]))


def test_rng_state_round_trips():
    x = paddle.to_tensor(_images()[0])
    a = BatchMixer("both", 1.0, seed=7)
    a.mix(x)
    state = a.state_dict()
    expected = a.mix(x)
    b = BatchMixer("both", 1.0, seed=99)
    b.set_state_dict(state)
    got = b.mix(x)
    assert got.kind == expected.kind and got.lam == expected.lam and list(got.perm) == list(expected.perm)


# ------------------------------------------------------------------------------- through hapi
def _net(seed=0, c=4, classes=5):
    paddle.seed(seed)
    return nn.Sequential(nn.Conv2D(3, c, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2D(1), nn.Flatten(),
                         nn.Linear(c, classes))


def _model(net):
    model = paddle.Model(net)
    model.prepare(paddle.optimizer.SGD(0.1, parameters=net.parameters()), nn.CrossEntropyLoss())
    return model


def _record_inputs(net):
    seen = []
    net.register_forward_pre_hook(lambda layer, inputs: seen.append(inputs[0].numpy().copy()))
    return seen


def _start(cb, model):
    cb.set_model(model)
    cb.set_params({"steps": 2, "epochs": 1})
    cb.on_train_begin()
    cb.on_epoch_begin(0)  # slim callbacks set up at the first epoch begin (order contract)


def test_mixing_callback_mixes_train_batches_only_and_task_loss_uses_mixed_labels():
    x, y = _images()
    net = _net()
    model = _model(net)
    seen = _record_inputs(net)
    cb = MixingCallback("mixup", alpha=1.0, seed=0)
    _start(cb, model)
    captured = {}
    cb.seam.add_loss_term("spy", lambda ctx: captured.update(ctx=ctx) or paddle.zeros([]))
    losses = model.train_batch([x], [y], update=False)
    ctx = captured["ctx"]
    lam, perm = ctx.info["mixing"]["lam"], ctx.info["mixing"]["perm"]
    np.testing.assert_allclose(seen[-1], lam * x + (1 - lam) * x[perm], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ctx.labels[0].numpy(), y)  # metrics see clean labels
    out = net(paddle.to_tensor(seen[-1]))
    ce = nn.functional.cross_entropy
    expected = lam * ce(out, paddle.to_tensor(y)) + (1 - lam) * ce(out, paddle.to_tensor(y[perm]))
    np.testing.assert_allclose(float(losses[0]), float(expected), rtol=1e-5)
    model.eval_batch([x], [y])
    np.testing.assert_array_equal(seen[-1], x)  # evaluation is never mixed
    cb.on_train_end()


def test_teacher_sees_the_same_mixed_batch_as_the_student():
    x, y = _images()
    student, teacher = _net(0), _net(1, c=6)
    s_seen, t_seen = _record_inputs(student), _record_inputs(teacher)
    model = _model(student)
    cb = DistillCallback(teacher, soft_label_weight=1.0, mixing={"mode": "cutmix", "alpha": 1.0, "seed": 4})
    _start(cb, model)
    model.train_batch([x], [y])
    assert len(t_seen) == 1 and not np.array_equal(s_seen[-1], x)
    np.testing.assert_array_equal(s_seen[-1], t_seen[-1])
    model.eval_batch([x], [y])  # eval: no mixing, no teacher forward (KD is a training term)
    np.testing.assert_array_equal(s_seen[-1], x)
    assert len(t_seen) == 1
    cb.on_train_end()


def test_mixing_rng_state_travels_in_checkpoints(tmp_path):
    x, y = _images()
    model = _model(_net())
    seam = Seam.attach(model)
    cb = MixingCallback("both", seed=11)
    _start(cb, model)
    model.train_batch([x], [y])
    path = str(tmp_path / "ckpt")
    model.save(path)
    expected = cb.mixer.mix(paddle.to_tensor(x))
    # resume: a new model, the checkpoint loaded before the callback registers
    model2 = _model(_net())
    seam2 = Seam.attach(model2)
    model2.load(path)
    cb2 = MixingCallback("both", seed=0)
    _start(cb2, model2)
    got = cb2.mixer.mix(paddle.to_tensor(x))
    assert (got.kind, got.lam, list(got.perm)) == (expected.kind, expected.lam, list(expected.perm))
    for c, s in ((cb, seam), (cb2, seam2)):
        c.on_train_end()
        s.release()


def test_mixing_callback_fits_alone():
    class Data(paddle.io.Dataset):
        def __init__(self):
            self.x, self.y = _images(16, seed=2)

        def __getitem__(self, i):
            return self.x[i], self.y[i]

        def __len__(self):
            return 16

    model = _model(_net())
    model.fit(Data(), eval_data=Data(), epochs=1, batch_size=8, verbose=0, callbacks=[MixingCallback("cutmix")])
    assert Seam.get(model) is None  # released cleanly
