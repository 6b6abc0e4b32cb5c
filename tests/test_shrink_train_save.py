"""Training on after a physical shrink (sliced optimizer state) and save / load / export of shrunk nets."""

from __future__ import annotations

import numpy as np
import paddle
import pytest
from paddle import nn

from slim_callbacks.prune.shrink import (
    apply_shrunk_architecture,
    check_state_dict_shapes,
    describe_architecture,
    load_shrunk,
    save_shrunk,
    shrink_network,
    slice_optimizer_state,
)
from trainers.models import build_model


def _task(seed: int = 0) -> tuple[paddle.Tensor, paddle.Tensor]:
    """A tiny learnable task: the class is which quadrant of the image is brightest (4 classes)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 0.3, (32, 3, 16, 16)).astype("float32")
    y = rng.integers(0, 4, 32)
    for i, c in enumerate(y):
        r, q = divmod(int(c), 2)
        x[i, :, r * 8:(r + 1) * 8, q * 8:(q + 1) * 8] += 1.0
    return paddle.to_tensor(x), paddle.to_tensor(y.astype("int64"))


def _train(net, opt, x, y, steps: int) -> list[float]:
    net.train()
    losses = []
    for _ in range(steps):
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        opt.clear_grad()
        losses.append(float(loss))
    return losses


@pytest.mark.parametrize("kind", ["momentum", "adam"])
def test_optimizer_state_is_sliced_and_training_continues(kind):
    paddle.seed(0)
    net = build_model("resnet20", 4, width=0.5)
    if kind == "momentum":
        opt = paddle.optimizer.Momentum(0.05, momentum=0.9, parameters=net.parameters(), weight_decay=5e-4)
        acc_names = ["velocity"]
    else:
        opt = paddle.optimizer.Adam(0.003, parameters=net.parameters())
        acc_names = ["moment1", "moment2"]
    x, y = _task()
    _train(net, opt, x, y, 3)
    conv = net.layer2[0].conv1
    old_acc = {a: opt._accumulators[a][conv.weight.name].numpy().copy() for a in acc_names}
    params_before = list(opt._parameter_list)
    result = shrink_network(net, 0.5, input_shape=(1, 3, 16, 16), optimizer=opt)
    sl = result.slices[conv.weight.name]
    assert sl.new_shape == list(conv.weight.shape) and sl.new_shape[0] < sl.old_shape[0]
    for a in acc_names:  # accumulators hold exactly the kept rows/columns of the old state
        acc = opt._accumulators[a][conv.weight.name].numpy()
        expected = old_acc[a][sl.kept[0]][:, sl.kept.get(1, np.arange(old_acc[a].shape[1]))]
        np.testing.assert_array_equal(acc, expected)
    for store in opt._accumulators.values():
        for pname, acc in store.items():
            if pname in result.slices and int(np.prod(acc.shape)) > 1:
                assert list(acc.shape) == result.slices[pname].new_shape, pname
    assert [p is q for p, q in zip(opt._parameter_list, params_before)] == [True] * len(params_before)
    assert slice_optimizer_state(opt, result.slices) == 0  # idempotent: already sliced
    losses = _train(net, opt, x, y, 25)
    assert np.isfinite(losses).all() and np.mean(losses[-3:]) < 0.6 * np.mean(losses[:3])


def test_optimizer_that_does_not_hold_the_parameters_is_rejected():
    net = build_model("resnet20", 4, width=0.5)
    other = paddle.optimizer.Momentum(0.1, parameters=build_model("resnet20", 4, width=0.5).parameters())
    result = shrink_network(net, 0.5)
    with pytest.raises(ValueError, match="does not hold the shrunk trainable parameters"):
        slice_optimizer_state(other, result.slices)


def test_save_load_round_trip_and_clear_error_on_unpruned_network(tmp_path):
    paddle.seed(3)
    net = build_model("mobilenet_v2", 10, width=0.5)
    shrink_network(net, 0.4, criterion="fpgm")
    x = paddle.randn([2, 3, 32, 32])
    net.eval()
    expected = net(x).numpy()
    spec = describe_architecture(net)
    assert spec["layers"]["features.2.conv.1.0"]["attrs"]["_groups"] == net.features[2].conv[1][0]._groups

    fresh = build_model("mobilenet_v2", 10, width=0.5)
    with pytest.raises(ValueError, match=r"layer 'features.0.0' \(features.0.0.weight\): network has \[16, 3, 3, 3\]"):
        check_state_dict_shapes(fresh, net.state_dict())
    apply_shrunk_architecture(fresh, spec)
    check_state_dict_shapes(fresh, net.state_dict())
    fresh.set_state_dict(net.state_dict())
    fresh.eval()
    np.testing.assert_allclose(fresh(x).numpy(), expected, rtol=1e-6, atol=1e-6)

    path = str(tmp_path / "shrunk")
    save_shrunk(net, path)
    loaded = load_shrunk(build_model("mobilenet_v2", 10, width=0.5), path)
    loaded.eval()
    np.testing.assert_allclose(loaded(x).numpy(), expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="spec does not match this network"):
        apply_shrunk_architecture(build_model("resnet20", 10), spec)


def test_jit_save_of_shrunk_network(tmp_path):
    paddle.seed(4)
    net = build_model("resnet20", 10)
    shrink_network(net, target_mac_reduction=0.5)
    net.eval()
    x = paddle.randn([3, 3, 32, 32])
    expected = net(x).numpy()
    path = str(tmp_path / "infer" / "model")
    paddle.jit.save(net, path, input_spec=[paddle.static.InputSpec([None, 3, 32, 32], "float32")])
    loaded = paddle.jit.load(path)
    np.testing.assert_allclose(loaded(x).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_hapi_model_training_continues_after_shrink():
    """paddle.Model keeps working: same network object, same optimizer object, sliced state."""
    paddle.seed(5)
    x, y = _task(1)
    net = build_model("resnet20", 4, width=0.5)
    opt = paddle.optimizer.Momentum(0.02, momentum=0.9, parameters=net.parameters())
    model = paddle.Model(net)
    model.prepare(opt, nn.CrossEntropyLoss())
    for _ in range(3):
        model.train_batch([x], [y.reshape([-1, 1])])
    shrink_network(net, 0.5, input_shape=(1, 3, 16, 16), optimizer=opt)
    losses = [float(np.ravel(model.train_batch([x], [y.reshape([-1, 1])])[0])[0]) for _ in range(25)]
    assert np.isfinite(losses).all() and np.mean(losses[-3:]) < 0.6 * np.mean(losses[:3])
    assert net.layer1[0].conv1.weight.shape[0] == 4


_LEGACY_EXPORT = r"""
import os, sys
import numpy as np, paddle, paddle.inference as pi
sys.path.insert(0, os.getcwd())
from slim_callbacks.prune.shrink import shrink_network
from trainers.models import build_model
paddle.seed(0)
net = build_model("resnet20", 10, width=0.5)
shrink_network(net, 0.5)
net.eval()
x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype("float32")
expected = net(paddle.to_tensor(x)).numpy()
path = os.path.join(sys.argv[1], "model")
paddle.jit.save(net, path, input_spec=[paddle.static.InputSpec([None, 3, 32, 32], "float32")])
config = pi.Config(path + ".pdmodel", path + ".pdiparams")
config.enable_onednn()
config.disable_glog_info()
pred = pi.create_predictor(config)
h = pred.get_input_handle(pred.get_input_names()[0])
h.reshape([2, 3, 32, 32])
h.copy_from_cpu(x)
pred.run()
out = pred.get_output_handle(pred.get_output_names()[0]).copy_to_cpu()
print("MAXDIFF", float(np.abs(out - expected).max()))
"""


def test_legacy_program_export_runs_in_paddle_inference_onednn(tmp_path):
    """The deployment route of the bar (legacy .pdmodel, oneDNN) takes the shrunk network."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, FLAGS_enable_pir_api="0", OMP_NUM_THREADS="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", _LEGACY_EXPORT, str(tmp_path)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "model.pdmodel").exists()
    diff = float(proc.stdout.split("MAXDIFF")[-1])
    assert diff < 1e-4
