"""MQ-Bench: configuration spaces, the PTQ bench builder, storage, queries, import/export."""

from .builder import bench_build
from .importer import bench_import
from .query import Bench, bench_export, bench_info, bench_list
from .space import ConfigSpace, config_text, is_heldout, parse_config

__all__ = [
    "Bench",
    "ConfigSpace",
    "bench_build",
    "bench_export",
    "bench_import",
    "bench_info",
    "bench_list",
    "config_text",
    "is_heldout",
    "parse_config",
]
