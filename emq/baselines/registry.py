"""The registry of hand-made proxies, by their CLI names (`emq score --proxies`).

A proxy class in any module of this package registers itself with `@register_proxy`; its
place in `PROXIES`, in `all` and in every report is its declaration order (the package
imports its modules in a fixed order, see `__init__`; a new module's proxies come after those
of the modules before it). A new proxy is one new file, and the package refuses to import when a
concrete proxy class of the package is not registered, so none is silently left out.

A proxy whose form also exists inside the search space names it in `formula`: a key of
`emq.search_space.pset.HANDMADE`, the one home of those token lists (search_space may not
import this engine-level package, so the table lives there and proxies point at it).
"""

from __future__ import annotations

from ..errors import EmqError
from ..proxy import Proxy
from ..registry import Registry
from ..search_space.pset import HANDMADE

PROXIES: Registry[type[Proxy]] = Registry("proxy", "proxies")


def register_proxy(cls: type[Proxy]) -> type[Proxy]:
    """Class decorator: add a hand-made proxy under `cls.name`, after those declared before it."""
    where = f"{cls.__module__}.{cls.__qualname__}"
    if not cls.name or not cls.description or not cls.cost or cls.orientation not in (1, -1):
        raise EmqError(f"proxy class {where}: set name, description, cost and orientation (+1 or -1) to register it")
    if cls.formula and cls.formula not in HANDMADE:
        raise EmqError(f"proxy class {where}: formula {cls.formula!r} is not in emq.search_space.pset.HANDMADE")
    return PROXIES.add(cls.name, cls)


def check_complete(classes: list[type[Proxy]]) -> None:
    """Every concrete proxy class defined in this package is registered; every space formula is claimed."""
    registered = set(PROXIES.values())
    missing = [
        f"{c.__module__}.{c.__qualname__}"
        for c in classes
        if c.__module__.startswith(__package__ + ".")
        and not getattr(c, "__abstractmethods__", None)
        and c not in registered
    ]
    if missing:
        raise EmqError(f"proxy classes {', '.join(missing)} are not registered: decorate them with @register_proxy")
    claimed = {p.formula for p in PROXIES.values() if p.formula}
    unclaimed = [k for k in HANDMADE if k not in claimed]
    if unclaimed:
        raise EmqError(
            f"search-space formulas {', '.join(unclaimed)} belong to no registered proxy: set `formula` on the "
            "proxy of that name"
        )


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
