"""The subcommands and their one-line help, importable without torch: `emq --help` and
`emq --version` read this table and import no command module; a command's module
(`emq/cli/cmd_<name>.py`) is imported only when that command runs."""

COMMANDS = {
    "allocate": "choose per-slot bit-widths with a proxy under budgets (ILP or constrained search)",
    "bench": "build, inspect, import and export MQ-Bench files",
    "demo": "end to end on the embedded default: statistics, search, export, allocation, PTQ",
    "export": "export a proxy (JSON) as sympy, LaTeX, Python, DOT or PNG",
    "frontier": (
        "what to measure on a network without a bench: proxies, measured sensitivity and models fitted on k "
        "evaluations, by cost"
    ),
    "layers": "show a model's quantizable layers grouped into bit slots",
    "quantize": "PTQ-quantize a model with a bit configuration and evaluate it",
    "score": "correlate hand-made and evolved proxies with a bench (Spearman, Kendall, Pearson, top-k)",
    "search": "evolve proxy formulas whose scores rank a bench's bit configurations",
    "transfer": "leave-one-network-out and single-bench campaigns: evolved proxies measured on benches they never saw",
    "stats": "compute (or load from the cache) per-layer statistics: norms, Hessian traces, quantization noise",
}
