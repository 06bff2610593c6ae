"""Hand-made proxies (the seed methods and classic baselines) behind the one proxy interface."""

from .registry import PROXIES, get_proxy, parse_proxy_names

__all__ = ["PROXIES", "get_proxy", "parse_proxy_names"]
