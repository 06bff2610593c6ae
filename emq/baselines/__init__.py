"""Hand-made proxies (the seed methods and classic baselines) behind the one proxy interface.

Every module of this package is imported here, so a proxy defined (and registered with
`@register_proxy`) in a new file is available by name without further edits. `FIRST` are
imported in that order (it fixes the order of `PROXIES` and of reports); any other module
follows in name order.
"""

import importlib
import pkgutil

from ..proxy import Proxy
from .registry import PROXIES, check_complete, get_proxy, parse_proxy_names, register_proxy

FIRST = ("separable", "whole_config", "measured")
for _name in (*FIRST, *sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in FIRST)):
    importlib.import_module(f"{__name__}.{_name}")


def _subclasses(cls: type) -> list[type]:
    return [c for s in cls.__subclasses__() for c in (s, *_subclasses(s))]


check_complete(_subclasses(Proxy))

__all__ = ["PROXIES", "get_proxy", "parse_proxy_names", "register_proxy"]
