"""Paddle Inference worker run in a subprocess (FLAGS_enable_pir_api=0 set in its environment).

Not imported by the package: ``export.verify_deployment`` starts it as ``python _deploy_worker.py JOB.json``.
It needs only numpy and paddle.inference, so it never has to rebuild the user's network class.

Job keys: models {label: [pdmodel, pdiparams, int8(bool)]}, data (npz with 'x'), eval_batch, threads,
timing {batch_sizes, repeats, warmup} or null, out (npz for logits), result (json path).
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np


def make_predictor(pdmodel: str, pdiparams: str, int8: bool, threads: int):
    import paddle.inference as pi

    config = pi.Config(pdmodel, pdiparams)
    config.disable_gpu()
    config.set_cpu_math_library_num_threads(int(threads))
    config.enable_onednn() if hasattr(config, "enable_onednn") else config.enable_mkldnn()
    if int8:
        config.enable_onednn_int8() if hasattr(config, "enable_onednn_int8") else config.enable_mkldnn_int8()
    config.disable_glog_info()
    return pi.create_predictor(config)


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
    predictors = {label: make_predictor(m[0], m[1], bool(m[2]), job["threads"]) for label, m in job["models"].items()}
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
