"""Weight rounding methods of the PTQ engine, by name (`PTQSettings.weight_quantizer`).

A method is a `WeightQuantizer` subclass with a `name`; defining it in any module of this
package registers it (every module here is imported when the package is), so a new
rounding method is one file. The PTQ engine (`emq.quant.PTQEngine`) and the statistics'
Q_b(W) / E_b (`emq.search_space.stats`) both look the method up here by the same name, so
what a proxy sees is what the engine deploys.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import (
    QUANTIZERS,
    WeightQuantizer,
    check_quantizer_name,
    fake_quant,
    get_weight_quantizer,
)

for _mod in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_mod.name}")

from .mse import CLIP_GRID, quantize_weight  # noqa: E402  (the default method, re-exported)

__all__ = [
    "CLIP_GRID",
    "QUANTIZERS",
    "WeightQuantizer",
    "check_quantizer_name",
    "fake_quant",
    "get_weight_quantizer",
    "quantize_weight",
]
