"""Proxy evolution: the campaign estimator, its engine, diversity-prompting selection,
screening, variation and checkpoints."""

from .dps import DPSConfig
from .engine import Campaign, SearchConfig
from .estimator import ProxySearch, SearchResult, search
from .halloffame import HallOfFame

__all__ = ["Campaign", "DPSConfig", "HallOfFame", "ProxySearch", "SearchConfig", "SearchResult", "search"]
