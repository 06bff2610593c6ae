"""emq: discover training-free proxies for mixed-precision quantization.

The public API lives in `emq.api` and is reachable as `emq.<name>` (imported on first use,
so `import emq` stays cheap): e.g. `emq.quantize`, `emq.Bench`, `emq.search`, `emq.allocate`.
"""

from __future__ import annotations

from ._version import __version__ as __version__  # re-exported


def __getattr__(name: str):
    import importlib

    api = importlib.import_module("emq.api")
    if name in api.__all__:
        return getattr(api, name)
    raise AttributeError(f"module 'emq' has no attribute {name!r}")
