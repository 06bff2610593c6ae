"""Proxy evolution: the campaign engine, diversity-prompting selection, screening, checkpoints."""

from .dps import DPSConfig
from .engine import Campaign, SearchConfig
from .run import SearchResult, search

__all__ = ["Campaign", "DPSConfig", "SearchConfig", "SearchResult", "search"]
