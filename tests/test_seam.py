"""The seam: loss terms, batch transforms, step hooks, extra layers, checkpoints, uninstall."""

import os

import numpy as np
import paddle
import pytest

from slim_callbacks.callback import SlimCallback
from slim_callbacks.seam import Seam


def _model(seed=0, opt="momentum"):
    paddle.seed(seed)
    net = paddle.nn.Sequential(paddle.nn.Linear(4, 8), paddle.nn.ReLU(), paddle.nn.Linear(8, 3))
    model = paddle.Model(net)
    if opt == "momentum":
        optimizer = paddle.optimizer.Momentum(0.1, momentum=0.9, parameters=net.parameters())
    else:
        optimizer = paddle.optimizer.SGD(0.1, parameters=net.parameters())
    model.prepare(optimizer, paddle.nn.CrossEntropyLoss())
    return model


def _batch(seed=1, n=6):
    rng = np.random.RandomState(seed)
    return rng.randn(n, 4).astype("float32"), rng.randint(0, 3, (n, 1)).astype("int64")


def _grads(net):
    return [p.grad.numpy().copy() for p in net.parameters()]


def test_extra_term_gradient_equals_hand_written_loss():
    x, y = _batch()
    model = _model()
    seam = Seam.attach(model)
    seam.add_loss_term("l2", lambda ctx: 0.3 * (ctx.outputs[0] ** 2).mean())
    # grads through the seam (no update so we can read them)
    model.train_batch([x], [y], update=False)
    seam_grads = _grads(model.network)
    model.network.clear_gradients()
    # hand-written
    out = model.network(paddle.to_tensor(x))
    loss = paddle.nn.functional.cross_entropy(out, paddle.to_tensor(y)) + 0.3 * (out**2).mean()
    loss.backward()
    for a, b in zip(seam_grads, _grads(model.network)):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_logs_carry_each_term_and_eval_counts_task_only():
    x, y = _batch()
    model = _model()
    seam = Seam.attach(model)
    seam.add_loss_term("a", lambda ctx: paddle.to_tensor(2.0))
    seam.add_loss_term("b", lambda ctx: paddle.to_tensor(5.0), in_eval=True)
    train = model.train_batch([x], [y])
    assert len(train) == 3 and float(train[1]) == 2.0 and float(train[2]) == 5.0
    assert seam.loss_names("train") == ["task", "a", "b"]
    ev = model.eval_batch([x], [y])
    assert len(ev) == 2 and float(ev[1]) == 5.0
    assert seam.loss_names("eval") == ["task", "b"]


def test_term_must_return_tensor():
    x, y = _batch()
    model = _model()
    Seam.attach(model).add_loss_term("bad", lambda ctx: 1.0)
    with pytest.raises(TypeError, match="bad"):
        model.train_batch([x], [y])


def _stack(order):
    """Two transforms (scale then shift, in the given registration order) and two terms."""
    x, y = _batch()
    model = _model()
    seam = Seam.attach(model)
    seen = []

    def scale(ctx):
        ctx.inputs = [ctx.inputs[0] * 2.0]
        seen.append("scale")

    def shift(ctx):
        ctx.inputs = [ctx.inputs[0] + 1.0]
        seen.append("shift")

    regs = {
        "scale": lambda: seam.add_batch_transform("scale", scale, priority=0),
        "shift": lambda: seam.add_batch_transform("shift", shift, priority=1),
        "t1": lambda: seam.add_loss_term("t1", lambda ctx: ctx.outputs[0].abs().mean()),
        "t2": lambda: seam.add_loss_term("t2", lambda ctx: ctx.inputs[0].mean() * 0 + 1.0),
    }
    for key in order:
        regs[key]()
    losses = model.train_batch([x], [y])
    return seen, sorted(float(v) for v in losses), [p.numpy() for p in model.network.parameters()]


def test_two_callbacks_stack_in_both_orders():
    seen_a, losses_a, params_a = _stack(["scale", "t1", "shift", "t2"])
    seen_b, losses_b, params_b = _stack(["shift", "t2", "scale", "t1"])
    # priorities define the transform order whatever the registration order
    assert seen_a == seen_b == ["scale", "shift"]
    np.testing.assert_allclose(losses_a, losses_b, rtol=1e-6)
    for a, b in zip(params_a, params_b):
        np.testing.assert_allclose(a, b, atol=1e-7)


def test_equal_priority_keeps_registration_order():
    x, y = _batch()
    model = _model()
    seam = Seam.attach(model)
    order = []
    seam.add_batch_transform("b", lambda ctx: order.append("b"))
    seam.add_batch_transform("a", lambda ctx: order.append("a"))
    model.train_batch([x], [y])
    assert order == ["b", "a"]
    with pytest.raises(ValueError, match="already registered"):
        seam.add_batch_transform("a", lambda ctx: None)


def test_label_mixture_weights_the_task_loss():
    x, y = _batch()
    y2 = (y + 1) % 3
    model = _model()
    seam = Seam.attach(model)

    def mix(ctx):
        ctx.label_mixture = [(0.25, [paddle.to_tensor(y)]), (0.75, [paddle.to_tensor(y2)])]

    seam.add_batch_transform("mix", mix)
    losses = model.train_batch([x], [y], update=False)
    model.network.clear_gradients()
    out = model.network(paddle.to_tensor(x))
    ce = paddle.nn.functional.cross_entropy
    expected = 0.25 * ce(out, paddle.to_tensor(y)) + 0.75 * ce(out, paddle.to_tensor(y2))
    np.testing.assert_allclose(float(losses[0]), float(expected), rtol=1e-6)


def test_registered_layer_trains_and_leaves_on_uninstall():
    x, y = _batch()
    model = _model()
    before_attrs = dict(model.__dict__)
    before_params = list(model._optimizer._parameter_list)
    seam = Seam.attach(model)
    adapter = paddle.nn.Linear(3, 3)
    w0 = adapter.weight.numpy().copy()
    seam.register_layer("adapter", adapter)
    seam.add_loss_term("adapt", lambda ctx: adapter(ctx.outputs[0]).pow(2).mean())
    model.train_batch([x], [y])
    assert not np.allclose(adapter.weight.numpy(), w0), "registered parameter did not change"
    seam.release()
    assert Seam.get(model) is None
    assert model.__dict__.keys() == before_attrs.keys()
    assert model._loss is before_attrs["_loss"]
    assert [id(p) for p in model._optimizer._parameter_list] == [id(p) for p in before_params]
    assert "train_batch" not in model.__dict__ and "save" not in model.__dict__


def test_step_hooks_and_update_count_follow_gradient_accumulation():
    x, y = _batch()
    model = _model()
    seam = Seam.attach(model)
    calls = []
    seam.add_step_hook("h", lambda ctx: calls.append(seam.global_step))
    for update in (False, False, True, False, True):
        model.train_batch([x], [y], update=update)
    assert seam.global_step == 2 and calls == [1, 2]
    model._accumulate = 4
    assert seam.steps_per_epoch(10) == 3


def test_fit_with_callbacks_counts_updates_and_releases():
    x, y = _batch(n=40)
    ds = paddle.io.TensorDataset([paddle.to_tensor(x), paddle.to_tensor(y)])
    model = _model()

    class Probe(SlimCallback):
        def setup(self, seam):
            seam.add_loss_term("zero", lambda ctx: ctx.outputs[0].sum() * 0.0)
            self.losses = []

        def on_train_batch_end(self, step, logs=None):
            self.losses.append(list(logs["loss"]))
            self.spe = self.steps_per_epoch
            self.gs = self.global_step

    probe = Probe()
    model.fit(ds, batch_size=8, epochs=2, verbose=0, callbacks=[probe], accumulate_grad_batches=2)
    assert all(len(l) == 2 for l in probe.losses)
    assert probe.spe == 3 and probe.gs == 6  # 5 batches/epoch -> 3 updates/epoch
    assert Seam.get(model) is None


def test_checkpoint_carries_state_extras_and_is_atomic(tmp_path):
    x, y = _batch()
    model = _model()
    seam = Seam.attach(model)
    box = {"v": 7}
    seam.register_state("box", lambda: dict(box), lambda s: box.update(s))
    adapter = paddle.nn.Linear(2, 2)
    seam.register_layer("ad", adapter)
    model.train_batch([x], [y])
    path = str(tmp_path / "ck")
    model.save(path)
    assert sorted(os.listdir(tmp_path)) == ["ck.pdopt", "ck.pdparams", "ck.slim"]
    saved_w = adapter.weight.numpy().copy()
    seam.release()

    model2 = _model(seed=5)
    seam2 = Seam.attach(model2)
    model2.load(path)
    assert seam2.global_step == 1
    box2 = {}
    seam2.register_state("box", lambda: box2, lambda s: box2.update(s))  # registered after load
    assert box2 == {"v": 7}
    ad2 = paddle.nn.Linear(2, 2)
    seam2.register_layer("ad", ad2)
    np.testing.assert_allclose(ad2.weight.numpy(), saved_w)
    for a, b in zip(model.network.parameters(), model2.network.parameters()):
        np.testing.assert_allclose(a.numpy(), b.numpy())
    with pytest.raises(FileNotFoundError, match="nope"):
        model2.load(str(tmp_path / "nope"))


def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    x, y = _batch()
    model = _model()
    seam = Seam.attach(model)
    path = str(tmp_path / "ck")
    model.train_batch([x], [y])
    model.save(path)
    good = paddle.load(path + ".pdparams")
    model.train_batch([x], [y])

    def boom():
        raise OSError(28, "No space left on device")

    seam.register_state("boom", boom, lambda s: None)
    with pytest.raises(OSError, match="No space"):
        model.save(path)
    assert sorted(os.listdir(tmp_path)) == ["ck.pdopt", "ck.pdparams", "ck.slim"]
    after = paddle.load(path + ".pdparams")
    for k in good:
        np.testing.assert_array_equal(good[k].numpy(), after[k].numpy())


def test_seam_needs_prepared_model():
    model = paddle.Model(paddle.nn.Linear(2, 2))
    with pytest.raises(RuntimeError, match="prepare"):
        Seam.attach(model)


def test_resume_in_a_fresh_network_restores_optimizer_state_of_network_and_extras(tmp_path):
    """Runtime parameter names differ between networks built in one process; the checkpoint must not care."""
    x, y = _batch()

    def build(seed):
        paddle.seed(seed)
        net = paddle.nn.Sequential(paddle.nn.Linear(4, 8), paddle.nn.ReLU(), paddle.nn.Linear(8, 3))
        model = paddle.Model(net)
        model.prepare(paddle.optimizer.Adam(0.01, parameters=net.parameters()), paddle.nn.CrossEntropyLoss())
        seam = Seam.attach(model)
        adapter = paddle.nn.Linear(3, 3)
        return model, seam, adapter

    model, seam, adapter = build(0)
    seam.register_layer("ad", adapter)
    seam.add_loss_term("ad", lambda ctx: adapter(ctx.outputs[0]).pow(2).mean())
    for _ in range(3):
        model.train_batch([x], [y])
    model.save(str(tmp_path / "ck"))

    model2, seam2, adapter2 = build(1)
    model2.load(str(tmp_path / "ck"))
    seam2.register_layer("ad", adapter2)  # after the load, as a callback would at train begin
    seam2.add_loss_term("ad", lambda ctx: adapter2(ctx.outputs[0]).pow(2).mean())
    model.train_batch([x], [y])
    model2.train_batch([x], [y])
    pairs = list(zip(model.network.parameters(), model2.network.parameters()))
    pairs += list(zip(adapter.parameters(), adapter2.parameters()))
    for a, b in pairs:
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)


def test_epoch_events_run_in_priority_order_whatever_the_list_order():
    x, y = _batch(n=16)
    ds = paddle.io.TensorDataset([paddle.to_tensor(x), paddle.to_tensor(y)])
    events = []

    def make(name, prio):
        class Member(SlimCallback):
            priority = prio

            def setup(self, seam):
                events.append(("setup", name))

            def on_epoch_begin(self, epoch, logs=None):
                events.append(("begin", name, epoch))

            def on_epoch_end(self, epoch, logs=None):
                events.append(("end", name, epoch))

            def teardown(self, seam):
                events.append(("teardown", name))

        Member.__name__ = name
        return Member()

    runs = []
    for order in (["late", "early"], ["early", "late"]):
        events.clear()
        members = {"early": make("early", 10), "late": make("late", 30)}
        model = _model()
        model.fit(ds, batch_size=8, epochs=2, verbose=0, callbacks=[members[n] for n in order])
        runs.append(list(events))
        assert Seam.get(model) is None
    assert runs[0] == runs[1]
    assert runs[0][:4] == [("setup", "early"), ("setup", "late"), ("begin", "early", 0), ("begin", "late", 0)]
    assert runs[0][-2:] == [("teardown", "late"), ("teardown", "early")]
    assert runs[0].count(("end", "early", 1)) == 1
