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


def test_resume_continues_epoch_count_and_step(tmp_path):
    log_dir = tmp_path / "r"
    args = ["--train-subset", "192", "--batch-size", "64", "--threads", "1", "--quiet", "--log-dir", str(log_dir)]
    run(args + ["--epochs", "1"])
    first = paddle.load(str(log_dir / "checkpoints" / "latest.slim"))
    assert first["global_step"] == 3 and first["state"]["trainer"]["epochs_done"] == 1
    run(args + ["--epochs", "2", "--resume", str(log_dir / "checkpoints" / "latest")])
    second = paddle.load(str(log_dir / "checkpoints" / "latest.slim"))
    assert second["global_step"] == 6 and second["state"]["trainer"]["epochs_done"] == 2
    assert (log_dir / "checkpoints" / "epoch_2.pdparams").exists()


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
    assert "not writable" in capsys.readouterr().err and str(blocker) in capsys.readouterr().err + str(blocker)
    assert main(["--dataset", "cifar100", "--data-file", str(tmp_path / "nope.tar.gz")] + TINY) == 2
    assert "nope.tar.gz" in capsys.readouterr().err


def test_example_recipes_parse():
    root = os.path.join(os.path.dirname(os.path.dirname(__file__)), "examples", "recipes")
    names = sorted(os.listdir(root))
    assert "baseline.yaml" in names
    for name in names:
        load_recipe(os.path.join(root, name))
