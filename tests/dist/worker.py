"""Run by tests/test_distributed.py under paddle.distributed.launch (2 CPU processes, gloo).

Trains a small network with the SlimTrainer and the callbacks of the recipe given on the command line,
then writes this rank's network weights, extra layers and buffers to OUT/rank<r>.npz.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/

import numpy as np  # noqa: E402
import paddle  # noqa: E402

from slim_callbacks.seam import Seam  # noqa: E402
from trainers.data import build_datasets  # noqa: E402
from trainers.models import build_model  # noqa: E402
from trainers.recipe import build_callbacks, load_recipe  # noqa: E402
from trainers.trainer import SlimTrainer, TrainConfig  # noqa: E402


def main(recipe_path: str, out_dir: str) -> None:
    recipe = load_recipe(recipe_path)
    train, test, n = build_datasets("sample", train_subset=int(recipe.get("train_subset", 256)))
    paddle.seed(0)
    network = build_model(recipe.get("model", "resnet20"), n, width=float(recipe.get("width", 0.25)))
    context = {}
    if "teacher" in recipe:
        paddle.seed(1)
        teacher = build_model(recipe["teacher"]["model"], n, width=float(recipe["teacher"].get("width", 0.25)))
        from test_compose import calibrate_bn

        calibrate_bn(teacher, train)
        context["teacher"] = teacher
    callbacks = build_callbacks(recipe, context)
    config = TrainConfig(**{k: v for k, v in recipe.items() if k in TrainConfig.__dataclass_fields__})
    trainer = SlimTrainer(network, train, test, callbacks=callbacks, config=config, log_dir=os.path.join(out_dir, "run"))
    extras = {}

    class Grab(paddle.callbacks.Callback):
        def on_train_end(self, logs=None):
            seam = Seam.get(self.model)
            for name, layer in (seam.extra_layers if seam else {}).items():
                for k, v in layer.state_dict().items():
                    extras[f"extra:{name}.{k}"] = v.numpy()

    trainer.callbacks.insert(0, Grab())
    trainer.fit()
    trainer.write_card()
    rank = paddle.distributed.get_rank()
    arrays = {k: v.numpy() for k, v in network.state_dict().items()}
    arrays.update(extras)
    np.savez(os.path.join(out_dir, f"rank{rank}.npz"), **arrays)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
