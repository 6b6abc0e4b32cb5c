"""slim-callbacks: model compression for PaddlePaddle as paddle.Model callbacks."""

from .callback import SlimCallback
from .distill import DistillCallback, MixingCallback
from .prune import GradualPruneCallback
from .quant import PTQCallback, QATCallback
from .reporting import Record, Reporter
from .schedule import (
    CallableSchedule,
    ConstantSchedule,
    CubicSchedule,
    ExponentialSchedule,
    LinearSchedule,
    PolynomialSchedule,
    Schedule,
    schedule_from_config,
)
from .seam import Seam, StepContext
from .vdl import SlimVisualDL

__version__ = "0.1.0"

__all__ = [
    "QATCallback",
    "PTQCallback",
    "GradualPruneCallback",
    "DistillCallback",
    "MixingCallback",
    "SlimCallback",
    "Seam",
    "StepContext",
    "Reporter",
    "Record",
    "SlimVisualDL",
    "Schedule",
    "ConstantSchedule",
    "LinearSchedule",
    "PolynomialSchedule",
    "CubicSchedule",
    "ExponentialSchedule",
    "CallableSchedule",
    "schedule_from_config",
]
