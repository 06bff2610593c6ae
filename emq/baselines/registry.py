"""The registry of hand-made proxies, by their CLI names (`emq score --proxies`)."""

from __future__ import annotations

from collections.abc import Callable

from ..errors import EmqError
from ..proxy import Proxy
from .ompq import OMPQ
from .separable import SEPARABLE
from .whole_config import WHOLE_CONFIG

ORDER = ("hawq-v1", "hawq-v2", "fisher", "snip", "synflow", "qe", "ompq", "bitsum", "size", "bitops", "emq-published", "gmpq", "seam", "kl")

PROXIES: dict[str, Callable[..., Proxy]] = {name: {**SEPARABLE, OMPQ.name: OMPQ, **WHOLE_CONFIG}[name] for name in ORDER}


def get_proxy(name: str, **options) -> Proxy:
    """A fresh instance of the hand-made proxy `name` (options, e.g. OMPQ's beta, go to its constructor)."""
    factory = PROXIES.get(name)
    if factory is None:
        raise EmqError(f"unknown proxy {name!r}: use one of {', '.join(PROXIES)} (or 'all')")
    try:
        return factory(**options)
    except TypeError as e:
        raise EmqError(f"proxy {name!r} does not take the options {sorted(options)}") from e


def parse_proxy_names(text: str) -> list[str]:
    """`all` or a comma-separated list of registry names, in the order given, without repeats."""
    if text.strip() == "all":
        return list(PROXIES)
    names = list(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    if not names:
        raise EmqError("--proxies: give 'all' or comma-separated names, e.g. hawq-v2,ompq,kl")
    for n in names:
        get_proxy(n)  # validates the name before any expensive work
    return names
