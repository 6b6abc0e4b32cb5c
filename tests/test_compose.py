"""QAT + gradual pruning + distillation (+ CutMix) in one fit: order independence, zeros that survive
fake quantization and the INT8 export, and an exact resume of the whole stack."""

import os
import subprocess
import sys

import numpy as np
import paddle
import pytest

from slim_callbacks import DistillCallback, GradualPruneCallback, QATCallback
from slim_callbacks.quant import export_int8, quantized_layers
from trainers.data import build_datasets
from trainers.models import build_model
from trainers.trainer import SlimTrainer, TrainConfig

EPOCHS = 3


def calibrate_bn(net, data, batches=8):
    """An untrained stand-in teacher: give its BN layers real running statistics, so its eval-mode
    features have the scale a trained teacher's would (with init statistics they explode with depth)."""
    np.random.seed(0)  # the training split augments with numpy's global RNG
    loader = paddle.io.DataLoader(data, batch_size=32, shuffle=False)
    net.train()
    with paddle.no_grad():
        for i, (x, _) in enumerate(loader):
            if i == batches:
                break
            net(x)
    net.eval()


class KilledAfter(paddle.callbacks.Callback):
    def __init__(self, epochs):
        super().__init__()
        self.epochs = epochs

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 >= self.epochs:
            self.model.stop_training = True


def stack_trainer(log_dir, make_callbacks, extra=()):
    """SlimTrainer of a ResNet-20 (width 0.25) student on 128 sample images, for EPOCHS epochs, with
    ``make_callbacks(teacher)`` (teacher: a BN-calibrated ResNet-20 of width 0.5) plus ``extra``."""
    train, test, n = build_datasets("sample", train_subset=128)
    test = paddle.io.Subset(test, list(range(64)))
    paddle.seed(7)
    teacher = build_model("resnet20", n, width=0.5)
    calibrate_bn(teacher, train)
    paddle.seed(0)
    student = build_model("resnet20", n, width=0.25)
    return SlimTrainer(
        student, train, test, callbacks=list(make_callbacks(teacher)) + list(extra),
        config=TrainConfig(epochs=EPOCHS, batch_size=32, threads=1, verbose=0, lr=0.05, seed=1),
        log_dir=str(log_dir),
    )


def _trainer(log_dir, order, extra=()):
    def make(teacher):
        made = {
            "distill": DistillCallback(teacher, feature_pairs=[("layer3", "layer3")], feature_loss="mse",
                                       soft_label_weight=0.5, mixing="cutmix"),
            "prune": GradualPruneCallback(final_sparsity=0.5, start_epoch=0, end_epoch=1, granularity="global"),
            "qat": QATCallback(start_epoch=1),
        }
        return [made[k] for k in order]

    return stack_trainer(log_dir, make, extra)


@pytest.fixture(scope="module")
def composed(tmp_path_factory):
    base = tmp_path_factory.mktemp("compose")
    a = _trainer(base / "a", ["distill", "prune", "qat"])
    a.fit()
    b = _trainer(base / "b", ["qat", "prune", "distill"])
    b.fit()
    return base, a, b


def _conv_weights(net):
    return {name: layer.weight.numpy() for name, layer in quantized_layers(net).items() if layer.weight.ndim == 4}


def test_listing_order_does_not_change_the_result(composed):
    _, a, b = composed
    sa, sb = a.network.state_dict(), b.network.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        np.testing.assert_allclose(sa[key].numpy(), sb[key].numpy(), atol=1e-6, err_msg=key)


def test_pruned_zeros_survive_fake_quant(composed):
    _, a, _ = composed
    weights = _conv_weights(a.network)
    assert weights, "QAT did not quantize any conv"
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    total = sum(w.size for w in weights.values())
    assert zeros / total >= 0.45
    # the simulated (fake-quantized) weights are zero wherever the float weight is
    for name, layer in quantized_layers(a.network).items():
        if layer.weight.ndim != 4:
            continue
        with paddle.no_grad():
            simulated = layer.quantized_weight_and_bias()[0].numpy()
        assert np.all(simulated[layer.weight.numpy() == 0] == 0), name


READ_INT8 = r"""
import os, sys, numpy as np, paddle
paddle.enable_static()
exe = paddle.static.Executor(paddle.CPUPlace())
prog, _, _ = paddle.static.load_inference_model(sys.argv[1], exe)
out = {}
for var in prog.list_vars():
    if not var.persistable or var.name in ("feed", "fetch"):
        continue
    value = np.array(paddle.static.global_scope().find_var(var.name).get_tensor())
    if value.dtype == np.int8:
        out[var.name] = value
np.savez(sys.argv[2], **out)
"""


def test_pruned_zeros_reach_the_int8_export(composed, tmp_path):
    _, a, _ = composed
    path = str(tmp_path / "int8")
    export_int8(a.network, path, [None, 3, 32, 32])
    env = dict(os.environ, FLAGS_enable_pir_api="0", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", READ_INT8, path, str(tmp_path / "w.npz")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    exported = list(np.load(tmp_path / "w.npz").values())
    assert exported, "no int8 weights in the export"
    unmatched = []
    for name, w in _conv_weights(a.network).items():
        zero = w == 0
        hit = next((i for i, e in enumerate(exported) if e.shape == w.shape and np.all(e[zero] == 0)), None)
        if hit is None:
            unmatched.append(name)
        else:
            exported.pop(hit)
    assert not unmatched, f"pruned zeros lost in the INT8 export of {unmatched}"


def test_full_stack_resume_matches_an_uninterrupted_run(composed, tmp_path):
    _, a, _ = composed
    _trainer(tmp_path, ["prune", "qat", "distill"], extra=[KilledAfter(2)]).fit()  # killed after epoch 2
    resumed = _trainer(tmp_path, ["prune", "qat", "distill"])
    resumed.fit(resume=str(tmp_path / "checkpoints" / "latest"))
    sa, sr = a.network.state_dict(), resumed.network.state_dict()
    assert sa.keys() == sr.keys()
    for key in sa:
        np.testing.assert_allclose(sa[key].numpy(), sr[key].numpy(), atol=1e-6, err_msg=key)
