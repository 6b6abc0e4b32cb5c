"""A process killed (SIGKILL) in the middle of saving leaves the previous checkpoint loadable."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import paddle
import pytest

from slim_callbacks.seam import Seam

SAVER = r"""
import sys, numpy as np, paddle
sys.path.insert(0, sys.argv[2])
from slim_callbacks.seam import Seam
paddle.seed(0)
net = paddle.nn.Sequential(paddle.nn.Linear(64, 512), paddle.nn.ReLU(), paddle.nn.Linear(512, 512))
model = paddle.Model(net)
model.prepare(paddle.optimizer.Adam(1e-3, parameters=net.parameters()), paddle.nn.MSELoss())
seam = Seam.attach(model)
step = {"n": 0}
seam.register_state("counter", lambda: dict(step), lambda s: None)
x = np.random.rand(8, 64).astype("float32"); y = np.random.rand(8, 512).astype("float32")
while True:
    model.train_batch([x], [y])
    step["n"] += 1
    model.save(sys.argv[1])          # the same prefix over and over
    print(step["n"], flush=True)
"""


def _model():
    net = paddle.nn.Sequential(paddle.nn.Linear(64, 512), paddle.nn.ReLU(), paddle.nn.Linear(512, 512))
    model = paddle.Model(net)
    model.prepare(paddle.optimizer.Adam(1e-3, parameters=net.parameters()), paddle.nn.MSELoss())
    return model


def test_sigkill_during_saves_leaves_a_loadable_checkpoint(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    prefix = str(tmp_path / "ck")
    for delay in (1.5, 2.3, 3.1):  # kill at different moments of the save loop
        proc = subprocess.Popen([sys.executable, "-c", SAVER, prefix, root], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, env=dict(os.environ, OMP_NUM_THREADS="1"))
        deadline = time.time() + 120
        while not os.path.exists(prefix + ".slim") and time.time() < deadline:
            time.sleep(0.05)
        first = proc.stdout.readline()  # the first save is complete (however loaded the machine is)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        saved = [int(line) for line in (first + proc.stdout.read()).split()]
        assert saved, "the saver never completed a checkpoint"
        model = _model()
        seam = Seam.attach(model)
        model.load(prefix)  # must not raise: every file is whole
        state = Seam.read_checkpoint_state(prefix)
        assert seam.global_step == state["global_step"] == state["state"]["counter"]["n"]
        # the newest complete save, or the one whose .slim landed just before the kill
        assert state["global_step"] in (saved[-1], saved[-1] + 1)
        assert all(np.isfinite(p.numpy()).all() for p in model.network.parameters())
        # a killed save may leave its temp folder behind, never a stray file under the checkpoint's name
        assert sorted(n for n in os.listdir(tmp_path) if not n.startswith(".")) == [
            "ck.pdopt", "ck.pdparams", "ck.slim"]


def test_a_save_interrupted_between_renames_loads_the_previous_set(tmp_path, monkeypatch):
    """The three files are one set: a kill after the new .pdparams landed but before the .slim did
    must not pair new weights with old state; the previous complete save is loaded instead."""
    import slim_callbacks.ckpt_files as ckpt_files

    model = _model()
    seam = Seam.attach(model)
    x, y = np.random.rand(8, 64).astype("float32"), np.random.rand(8, 512).astype("float32")
    prefix = str(tmp_path / "ck")
    model.train_batch([x], [y])
    model.save(prefix)
    first = {k: v.numpy().copy() for k, v in model.network.state_dict().items()}
    model.train_batch([x], [y])

    class Killed(BaseException):
        pass

    calls = []

    def dies_before_the_slim(src, dst):
        if dst.endswith(".slim"):
            raise Killed()
        calls.append(dst)
        os.replace(src, dst)

    real_commit = ckpt_files.commit_set
    monkeypatch.setattr("slim_callbacks.seam.commit_set",
                        lambda tmp, path: real_commit(tmp, path, replace=dies_before_the_slim))
    try:
        model.save(prefix)
    except Killed:
        pass
    assert calls == [prefix + ".pdopt", prefix + ".pdparams"]  # new weights in place, the old .slim beside them
    fresh = _model()
    Seam.attach(fresh)
    with pytest.warns(UserWarning, match="torn"):
        fresh.load(prefix)
    assert Seam.get(fresh).global_step == 1
    for k, v in fresh.network.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), first[k])
    monkeypatch.undo()
    model.save(prefix)  # the next complete save repairs the checkpoint and drops the backup
    assert Seam.read_checkpoint_state(prefix)["global_step"] == 2
    assert sorted(os.listdir(tmp_path)) == ["ck.pdopt", "ck.pdparams", "ck.slim"]
    seam.release()
