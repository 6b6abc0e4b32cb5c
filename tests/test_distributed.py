"""Two CPU processes under paddle.distributed.launch (gloo): identical weights, masks, quantizer state
and adapters on both ranks; only rank 0 writes logs, cards and checkpoints."""

import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

BASE = {"model": "resnet20", "width": 0.25, "train_subset": 256, "epochs": 2, "batch_size": 32, "threads": 1,
        "verbose": 0, "lr": 0.05}


def launch(tmp_path, recipe: dict):
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "out"
    out.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--backend", "gloo",
           "--log_dir", str(tmp_path / "launch"), os.path.join(HERE, "dist", "worker.py"), str(recipe_file), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    logs = ""
    for name in ("workerlog.0", "workerlog.1"):
        path = tmp_path / "launch" / name
        if path.exists():
            logs += f"--- {name}\n" + path.read_text()[-3000:]
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:] + logs
    return out


def assert_same_on_both_ranks(out, buffers_too=False):
    r0, r1 = np.load(out / "rank0.npz"), np.load(out / "rank1.npz")
    assert sorted(r0.files) == sorted(r1.files)
    for key in r0.files:
        if not buffers_too and key.endswith(("_mean", "_variance")):
            continue  # plain DataParallel keeps per-rank BN running statistics (as Paddle does)
        np.testing.assert_allclose(r0[key], r1[key], atol=1e-5, err_msg=key)
    return r0


def assert_rank0_wrote_alone(out):
    run = out / "run"
    assert len(list(run.glob("vdlrecords*"))) == 1
    assert (run / "card.json").exists()
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("latest")) == [
        "latest.pdopt", "latest.pdparams", "latest.slim"]


@pytest.mark.slow
def test_two_process_baseline(tmp_path):
    out = launch(tmp_path, BASE)
    assert_same_on_both_ranks(out)
    assert_rank0_wrote_alone(out)


FULL_STACK = dict(BASE, epochs=3, teacher={"model": "resnet20", "width": 0.5}, callbacks=[
    {"type": "DistillCallback", "feature_pairs": [["layer3", "layer3"]], "feature_loss": "mse",
     "soft_label_weight": 0.5, "mixing": "cutmix"},
    {"type": "GradualPruneCallback", "final_sparsity": 0.6, "start_epoch": 0, "end_epoch": 1, "granularity": "global"},
    {"type": "QATCallback", "start_epoch": 1},
])


@pytest.mark.slow
def test_two_process_full_stack_agrees_on_masks_scales_and_adapters(tmp_path):
    out = launch(tmp_path, FULL_STACK)
    arrays = assert_same_on_both_ranks(out, buffers_too=True)  # QAT syncs ranges and BN statistics
    assert any(k.startswith("extra:") for k in arrays.files), "adapter weights missing"
    assert any(k.endswith("act_quant.scale") for k in arrays.files), "quantizer scales missing"
    convs = [arrays[k] for k in arrays.files if k.endswith("weight") and arrays[k].ndim == 4]
    zeros = sum(int((w == 0).sum()) for w in convs) / sum(w.size for w in convs)
    assert zeros >= 0.55, f"pruned fraction {zeros:.3f}"
    assert_rank0_wrote_alone(out)


SHRINK_STEP = dict(BASE, epochs=3, callbacks=[
    {"type": "GradualPruneCallback", "final_sparsity": 0.5, "start_epoch": 0, "end_epoch": 1, "schedule": "linear",
     "granularity": "channel", "shrink": "step"},
    {"type": "QATCallback", "start_epoch": 1},
])


def test_two_process_shrink_rewraps_data_parallel(tmp_path):
    """Channels removed at epoch 1 while training goes on for 2 more epochs under a new DataParallel:
    both ranks still agree (gradients were all-reduced for the shrunk parameters), then QAT runs on it."""
    out = launch(tmp_path, SHRINK_STEP)
    arrays = assert_same_on_both_ranks(out, buffers_too=True)
    dense = {"conv1.weight": [4, 3, 3, 3], "layer3.2.conv2.weight": [16, 16, 3, 3]}  # width 0.25
    for key, shape in dense.items():
        got = next(arrays[k].shape for k in arrays.files if k.endswith(key))
        assert got[0] == shape[0] // 2, (key, got)
    import paddle

    slim = paddle.load(str(out / "run" / "checkpoints" / "latest.slim"))
    assert slim["architecture"]["layers"]["layer3.2.conv2"]["params"]["weight"][0] == 8
    assert_rank0_wrote_alone(out)
