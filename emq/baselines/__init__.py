"""Hand-made proxies (the seed methods and classic baselines) behind the one proxy interface.

Every module of this package is imported here, so a proxy defined (and registered with
`@register_proxy`) in a new file is available by name without further edits.
"""

import importlib
import pkgutil

from ..proxy import Proxy
from .registry import PROXIES, check_complete, get_proxy, parse_proxy_names, register_proxy

for _mod in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_mod.name}")


def _subclasses(cls: type) -> list[type]:
    return [c for s in cls.__subclasses__() for c in (s, *_subclasses(s))]


check_complete(_subclasses(Proxy))

__all__ = ["PROXIES", "get_proxy", "parse_proxy_names", "register_proxy"]
