"""The bundled trainer: CLI, recipes, checkpoints, VisualDL (read back through a real server), card."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import paddle
import pytest

from slim_callbacks.callback import SlimCallback
from trainers import recipe as recipe_mod
from trainers.cifar100 import main, run
from trainers.recipe import RecipeError, build_callbacks, load_recipe, parse_recipe

TINY = ["--train-subset", "384", "--epochs", "1", "--batch-size", "64", "--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("run")
    card = run(TINY + ["--log-dir", str(log_dir), "--export", str(log_dir / "export")])
    return log_dir, card


def test_cli_run_writes_card_checkpoints_logs_and_export(trained_run):
    log_dir, card = trained_run
    assert card["params"] == 272474 - 640 - 10 + 64 * 10 + 10  # resnet20, 10 classes
    saved = json.loads((log_dir / "card.json").read_text())
    assert saved["macs"] == 40813184 and saved["extra"]["dataset"] == "sample"
    assert "| layer" in (log_dir / "card.md").read_text()
    assert {"latest.pdparams", "latest.slim", "epoch_1.pdparams"} <= set(os.listdir(log_dir / "checkpoints"))
    assert os.path.exists(saved["extra"]["export"]["fp32_model"] + ".pdiparams")
    from visualdl import LogReader

    reader = LogReader(file_path=str(next(log_dir.glob("vdlrecords*"))))
    tags = reader.get_tags()
    assert "train/loss/task" in tags["scalar"] and "eval/acc" in tags["scalar"] and "train/lr" in tags["scalar"]
    assert "compression/card" in tags.get("text", [])


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_visualdl_server_serves_trainer_scalars(trained_run):
    log_dir, _ = trained_run
    port = _free_port()
    visualdl = os.path.join(os.path.dirname(sys.executable), "visualdl")
    cmd = [visualdl] if os.path.exists(visualdl) else [sys.executable, "-m", "visualdl"]
    proc = subprocess.Popen(
        cmd + ["--logdir", str(log_dir), "--host", "127.0.0.1", "--port", str(port), "--language", "en"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(base + "/alive", timeout=2) as r:
                    if r.status in (200, 204):
                        break
            except OSError:
                pass
            assert time.time() < deadline, "visualdl server did not come up in 60 s"
            assert proc.poll() is None, "visualdl server exited"
            time.sleep(0.5)

        def get(path):
            with urllib.request.urlopen(base + path, timeout=10) as r:
                return json.loads(r.read())["data"]

        runs = get("/app/api/runs")
        assert runs, "no runs served"
        rows = get(f"/app/api/scalar/list?run={urllib.request.quote(runs[0])}&tag=eval/acc")
        assert rows and 0.0 <= rows[-1][2] <= 1.0
        loss_rows = get(f"/app/api/scalar/list?run={urllib.request.quote(runs[0])}&tag=train/loss/task")
        assert len(loss_rows) >= 1 and np.isfinite(loss_rows[-1][2])
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_cli_resume_checks_the_recipe(tmp_path, capsys):
    log_dir = tmp_path / "r"
    args = ["--train-subset", "192", "--batch-size", "64", "--threads", "1", "--quiet", "--log-dir", str(log_dir)]
    run(args + ["--epochs", "1"])
    first = paddle.load(str(log_dir / "checkpoints" / "latest.slim"))
    assert first["global_step"] == 3 and first["state"]["trainer"]["epochs_done"] == 1
    latest = str(log_dir / "checkpoints" / "latest")
    # a different recipe is refused, naming what differs
    assert main(args + ["--epochs", "1", "--lr", "0.05", "--resume", latest]) == 2
    assert "lr: checkpoint 0.1, now 0.05" in capsys.readouterr().err
    assert main(args + ["--epochs", "1", "--model", "resnet32", "--resume", latest]) == 2
    err = capsys.readouterr().err
    assert "model: checkpoint 'resnet20', now 'resnet32'" in err and "network parameters differ" in err
    # the same recipe with nothing left to train just evaluates
    card = run(args + ["--epochs", "1", "--resume", latest])
    assert card["extra"]["final_eval"]["acc"] >= 0


def test_nan_loss_stops_with_clear_error_and_keeps_checkpoint(tmp_path):
    from trainers.data import build_datasets
    from trainers.models import build_model
    from trainers.trainer import SlimTrainer, TrainConfig

    class NaNAfterFirstEpoch(SlimCallback):
        def setup(self, seam):
            spe = self.steps_per_epoch
            seam.add_loss_term("boom", lambda ctx: paddle.to_tensor(float("nan") if seam.global_step >= spe else 0.0))

    train, test, n = build_datasets("sample", train_subset=128)
    trainer = SlimTrainer(
        build_model("resnet20", n, width=0.25),
        train,
        None,
        callbacks=[NaNAfterFirstEpoch()],
        config=TrainConfig(epochs=3, batch_size=64, threads=1, verbose=0),
        log_dir=str(tmp_path),
    )
    with pytest.raises(FloatingPointError, match="non-finite loss.*boom=nan"):
        trainer.fit()
    latest = paddle.load(str(tmp_path / "checkpoints" / "latest.slim"))
    assert latest["state"]["trainer"]["epochs_done"] == 1
    assert not (tmp_path / "checkpoints" / "epoch_2.pdparams").exists()


def test_recipe_errors_name_the_key(tmp_path):
    with pytest.raises(RecipeError, match=r"unknown key\(s\) \['epoch'\].*valid keys"):
        parse_recipe({"epoch": 3}, "r.yaml")
    with pytest.raises(RecipeError, match=r"unknown callback type 'QATCallbak'.*QATCallback"):
        parse_recipe({"callbacks": [{"type": "QATCallbak"}]}, "r.yaml")
    with pytest.raises(RecipeError, match="epochs must be"):
        parse_recipe({"epochs": 0}, "r.yaml")
    with pytest.raises(RecipeError, match="optimizer 'adamw' is not valid"):
        parse_recipe({"optimizer": "adamw"}, "r.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(bad)
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_recipe(tmp_path / "missing.yaml")


def test_recipe_callback_params_are_checked(monkeypatch):
    class Dummy(SlimCallback):
        def __init__(self, ratio: float = 0.5, teacher=None):
            super().__init__()
            if not 0 <= ratio < 1:
                raise ValueError(f"ratio must be in [0, 1), got {ratio}")
            self.ratio, self.teacher = ratio, teacher

    monkeypatch.setitem(recipe_mod.CALLBACKS, "Dummy", f"{__name__}:_DUMMY")
    monkeypatch.setattr(sys.modules[__name__], "_DUMMY", Dummy, raising=False)
    ok = build_callbacks(parse_recipe({"callbacks": [{"type": "Dummy", "ratio": 0.25}]}), {"teacher": "T"})
    assert ok[0].ratio == 0.25 and ok[0].teacher == "T"
    with pytest.raises(RecipeError, match=r"callbacks\[0\] \(Dummy\): unknown key\(s\) \['rate'\]; valid keys: \['ratio', 'teacher'\]"):
        build_callbacks(parse_recipe({"callbacks": [{"type": "Dummy", "rate": 0.25}]}))
    with pytest.raises(RecipeError, match=r"ratio must be in \[0, 1\)"):
        build_callbacks(parse_recipe({"callbacks": [{"type": "Dummy", "ratio": 2}]}))


def test_cli_errors_are_clear(tmp_path, capsys):
    assert main(["--model", "resnet21"] + TINY + ["--log-dir", str(tmp_path / "a")]) == 2
    assert "resnet20" in capsys.readouterr().err
    assert main(["--dataset", "imagenet"] + TINY + ["--log-dir", str(tmp_path / "b")]) == 2
    assert "fashion_mnist" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(TINY + ["--log-dir", str(blocker / "logs")]) == 2
    err = capsys.readouterr().err
    assert "not writable" in err and str(blocker) in err
    assert main(["--dataset", "cifar100", "--data-file", str(tmp_path / "nope.tar.gz")] + TINY) == 2
    assert "nope.tar.gz" in capsys.readouterr().err


def test_example_recipes_build():
    from trainers.models import build_model

    root = os.path.join(os.path.dirname(os.path.dirname(__file__)), "examples", "recipes")
    names = sorted(os.listdir(root))
    assert {"baseline.yaml", "prune_qat.yaml", "full_stack.yaml", "channel_prune.yaml"} <= set(names)
    for name in names:
        recipe = load_recipe(os.path.join(root, name))
        callbacks = build_callbacks(recipe, {"teacher": build_model("resnet20", 10, width=0.25)})
        assert len(callbacks) == len(recipe.get("callbacks") or [])


@pytest.mark.slow
def test_fit_with_callbacks_example_runs(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [sys.executable, os.path.join(root, "examples", "fit_with_callbacks.py"), "--subset", "384",
         "--epochs", "2", "--teacher-epochs", "1", "--log-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=900, env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert 0.45 <= summary["sparsity"] <= 0.55  # 50% of the prunable weights, biases and BN dense


def _tiny_trainer(log_dir, epochs, callbacks=()):
    from trainers.data import build_datasets
    from trainers.models import build_model
    from trainers.trainer import SlimTrainer, TrainConfig

    train, _, n = build_datasets("sample", train_subset=192)
    paddle.seed(123)
    return SlimTrainer(
        build_model("resnet20", n, width=0.25),
        train,
        None,
        callbacks=list(callbacks),
        config=TrainConfig(epochs=epochs, batch_size=64, threads=1, verbose=0, seed=3),
        log_dir=str(log_dir),
    )


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    straight = _tiny_trainer(tmp_path / "a", epochs=2)
    straight.fit()

    class KilledAfterOneEpoch(paddle.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model.stop_training = True

    _tiny_trainer(tmp_path / "b", epochs=2, callbacks=[KilledAfterOneEpoch()]).fit()
    resumed = _tiny_trainer(tmp_path / "b", epochs=2)
    resumed.fit(resume=str(tmp_path / "b" / "checkpoints" / "latest"))
    a, b = straight.network.state_dict(), resumed.network.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key].numpy(), b[key].numpy(), atol=1e-6, err_msg=key)


def test_cli_channel_prune_recipe_shrinks_and_reports(tmp_path):
    root = os.path.join(os.path.dirname(os.path.dirname(__file__)), "examples", "recipes")
    log_dir = tmp_path / "cp"
    card = run(["--recipe", os.path.join(root, "channel_prune.yaml"), "--train-subset", "256", "--width", "0.5",
                "--batch-size", "64", "--threads", "1", "--quiet", "--log-dir", str(log_dir),
                "--export", str(log_dir / "export")])
    from slim_callbacks.prune.shrink import count_macs_per_image
    from trainers.models import build_model

    dense = build_model("resnet20", 10, width=0.5)
    assert card["macs"] < 0.6 * count_macs_per_image(dense)  # 30% of channels on both sides of most convs
    assert card["params"] < 0.6 * sum(int(p.size) for p in dense.parameters() if p.trainable)
    assert "removal(s)" in card["extra"]["channel pruning"]
    final = paddle.load(str(log_dir / "checkpoints" / "final.slim"))
    assert final["architecture"]["layers"]["conv1"]["params"]["weight"][0] == 6  # 8 -> 6 (30% of 8, floored)
    assert os.path.exists(str(log_dir / "export" / "model_fp32.pdiparams"))
