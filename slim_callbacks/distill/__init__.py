"""Knowledge distillation and batch mixing: feature taps, adapters, losses, CutMix/MixUp, callbacks."""

from .adapters import FeatureAdapter, build_adapter, resize_to
from .callback import DistillCallback, MixingCallback
from .distiller import Distiller, load_teacher
from .losses import FEATURE_LOSSES, attention_map, feature_loss, kd_loss
from .mixing import BatchMixer, CutMix, MixResult, MixUp, cutmix_box, mixer_from_config
from .taps import FeatureTap, TapSet, layer_names, resolve_layer

__all__ = [
    "DistillCallback", "MixingCallback", "Distiller", "load_teacher",
    "FeatureTap", "TapSet", "resolve_layer", "layer_names",
    "FeatureAdapter", "build_adapter", "resize_to",
    "FEATURE_LOSSES", "feature_loss", "kd_loss", "attention_map",
    "BatchMixer", "CutMix", "MixUp", "MixResult", "cutmix_box", "mixer_from_config",
]
