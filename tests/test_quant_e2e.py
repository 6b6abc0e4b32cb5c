"""End to end on the embedded Fashion-MNIST sample: QATCallback in fit, export, INT8 run agrees."""

from __future__ import annotations

import numpy as np
import paddle
import pytest

from slim_callbacks.quant import QATCallback, export_int8, quantized_layers, verify_deployment


@pytest.mark.slow
def test_qat_resnet20_sample_trains_and_deploys(tmp_path):
    from trainers.data import build_datasets
    from trainers.models import build_model

    paddle.seed(0)
    train, test, classes = build_datasets("sample", train_subset=2000)
    net = build_model("resnet20", num_classes=classes, width=0.5)
    model = paddle.Model(net)
    model.prepare(paddle.optimizer.Momentum(0.05, parameters=net.parameters(), weight_decay=5e-4),
                  paddle.nn.CrossEntropyLoss(), paddle.metric.Accuracy())
    model.fit(train, epochs=3, batch_size=64, verbose=0,
              callbacks=[QATCallback(start_epoch=1, freeze_observer_epoch=2)])
    assert len(quantized_layers(net)) == 22
    x, y = zip(*(test[i] for i in range(500)))
    x, y = np.stack(x).astype("float32"), np.concatenate(y)
    export_int8(net, str(tmp_path / "r20"), [None, 3, 32, 32])
    result = verify_deployment(net, str(tmp_path / "r20"), x, y, batch_sizes=(32,), repeats=3, warmup=1, threads=1)
    assert result["top1_sim"] > 0.35  # chance is 0.1: training under fake quantization moved accuracy
    assert result["agreement_int8_vs_sim"] >= 0.98
    assert abs(result["top1_int8"] - result["top1_sim"]) <= 0.02
    assert result["onednn_fp32_primitives"] == 0 and result["onednn_int8_primitives"] == 22
    assert result["speedup_b32"] > 1.0
    assert result["pdiparams_bytes_int8"] < 0.35 * result["pdiparams_bytes_fp32"]
