"""Paddle Inference worker run in a subprocess (FLAGS_enable_pir_api=0 set in its environment).

``export.verify_deployment`` starts it as ``python _deploy_worker.py JOB.json``; it needs only numpy and
paddle.inference, so it never has to rebuild the user's network class. The package re-exports
:func:`inference_config`, the deployment configuration it measures.

Job keys: models {label: [pdmodel, pdiparams, int8(bool), optional fuse_residual(bool)]}, data (npz with 'x'), eval_batch, threads,
timing {batch_sizes, repeats, warmup} or null, out (npz for logits), result (json path).
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np


#: Paddle Inference passes deleted for INT8 models unless ``fuse_residual=True``: fusing a residual add
#: into the conv before quantization leaves every conv whose add operand carries no recorded scale
#: (after a projection shortcut, at the last block) in f32 (docs/quantization.md).
RESIDUAL_FUSION_PASSES = ("conv_elementwise_add_onednn_fuse_pass",)


def inference_config(pdmodel: str, pdiparams: str, int8: bool = True, threads: int = 1,
                     fuse_residual: bool = False):
    """The ``paddle.inference.Config`` that :func:`slim_callbacks.quant.verify_deployment` measures.

    oneDNN on CPU with ``threads`` math threads; with ``int8``, oneDNN INT8 and (unless
    ``fuse_residual``) without the conv + residual-add fusion, so that every conv runs s8/u8. Load a
    legacy ``.pdmodel`` with ``FLAGS_enable_pir_api=0`` in the environment.
    """
    import paddle.inference as pi

    config = pi.Config(pdmodel, pdiparams)
    config.disable_gpu()
    config.set_cpu_math_library_num_threads(int(threads))
    config.enable_onednn() if hasattr(config, "enable_onednn") else config.enable_mkldnn()
    if int8:
        config.enable_onednn_int8() if hasattr(config, "enable_onednn_int8") else config.enable_mkldnn_int8()
        if not fuse_residual:
            for name in RESIDUAL_FUSION_PASSES:
                config.delete_pass(name)
    config.disable_glog_info()
    return config


def make_predictor(pdmodel: str, pdiparams: str, int8: bool, threads: int, fuse_residual: bool = False):
    import paddle.inference as pi

    return pi.create_predictor(inference_config(pdmodel, pdiparams, int8, threads, fuse_residual))


def run(predictor, x: np.ndarray) -> np.ndarray:
    handle = predictor.get_input_handle(predictor.get_input_names()[0])
    handle.reshape(list(x.shape))
    handle.copy_from_cpu(np.ascontiguousarray(x, dtype=np.float32))
    predictor.run()
    return predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()


def main(job_path: str) -> None:
    with open(job_path) as f:
        job = json.load(f)
    x = np.load(job["data"])["x"]
    predictors = {label: make_predictor(m[0], m[1], bool(m[2]), job["threads"], bool(m[3]) if len(m) > 3 else False)
                  for label, m in job["models"].items()}
    bs = int(job.get("eval_batch", 64))
    logits = {label: np.concatenate([run(p, x[i:i + bs]) for i in range(0, len(x), bs)])
              for label, p in predictors.items()}
    np.savez(job["out"], **logits)
    result: dict = {"latency_ms": {}}
    timing = job.get("timing")
    if timing:
        for batch in timing["batch_sizes"]:
            xb = np.resize(x, (int(batch),) + x.shape[1:]).astype(np.float32)
            for p in predictors.values():
                for _ in range(int(timing["warmup"])):
                    run(p, xb)
            samples: dict[str, list[float]] = {label: [] for label in predictors}
            for _ in range(int(timing["repeats"])):
                for label, p in predictors.items():  # interleaved: drift hits both models alike
                    t0 = time.perf_counter()
                    run(p, xb)
                    samples[label].append((time.perf_counter() - t0) * 1000.0)
            for label, values in samples.items():
                result["latency_ms"].setdefault(label, {})[str(batch)] = float(np.median(values))
    with open(job["result"], "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1])
