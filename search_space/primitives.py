"""The operations of the proxy search space, each defined once: semantics, sympy, LaTeX, Python.

A proxy is a per-layer expression. Values carry a leading *bit dimension* of size B
(bit-dependent) or 1 (bit-independent) that broadcasts, so one evaluation of a layer yields
its whole row P[l, :]. The semantics in `OpSpec.fn` are the exact definition on one layer:

- tensors have shape [Bk, *layer_shape]; elementwise ops act per element;
- ``reduce`` ops reduce every dimension except the leading one: [Bk, ...] -> [Bk];
- ``layer`` ops (normalize, min-max, softmax) standardise over one layer's elements,
  separately for each leading index;
- ``scale`` multiplies a tensor by a scalar of the same layer;
- ``network`` ops (scalars only) normalize a per-layer scalar over the network's own layers:
  their `fn` takes the scalar of every layer at once, [Bk, L], and acts along the layer axis
  separately for each leading index. The value is still fixed per (layer, bit), so a proxy
  using them stays separable and its table still feeds the allocation ILP; evaluate.py
  computes them over all layers in both its packed and its per-layer path.

Divisions, reciprocals, logs and exps are protected (smooth, exact formulas that sympy can
render), so every formula is defined everywhere; NaN/inf can still arise from overflow and
are caught by screening.

Value types keep tensors of different shapes apart (DEAP's typed GP): weight-shaped,
layer-input-shaped and layer-output-shaped tensors, and per-layer scalars.

Terminals are registered in `_TERMINAL_LIST` (one `TerminalSpec` each: type, renderings,
per-layer value). What a new one costs:

- a *derived* terminal (computed from existing ones, e.g. G*W or Tr(H)/n): one TerminalSpec
  appended to `_TERMINAL_LIST` with `derive`, `needs` and `python` (and `render_sympy` when
  the symbol is not just its name), plus its test. Packing, the evaluator, presets (via
  `raw_sources`), screening, sympy/LaTeX/Python export pick it up; keep `default=False`
  unless the default search space (and so every search result) is meant to change.
- a *raw* statistic (something the statistics pass must measure): its TerminalSpec, a
  LayerStats field and its entry in TENSOR_FIELDS or SCALAR_FIELDS (netstats.py, which
  changes the file format: bump FORMAT), its computation in stats.py `_compute`, the
  `terminals()` loop of exported Python when it is a scalar with a `raw` reader, and a
  test; old statistics caches are then recomputed.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass
from typing import Any

import sympy
import torch

from emq.errors import EmqError
from emq.registry import Registry

EPS = 1e-12  # protection constant of divisions and reciprocals
LOG_EPS = 1e-8  # protection constant of log(|x| + eps)
EXP_CLAMP = 30.0  # exp(min(x, EXP_CLAMP)) keeps float64 finite under a few more ops


class WeightT:
    """Weight-shaped tensor [Bk, *W.shape] (W, G, VG, H, SG, FD, Q_b(W), E_b)."""


class InputT:
    """Layer-input-shaped tensor [Bk, n, *A.shape[1:]] (A, activation noise AE)."""


class OutputT:
    """Layer-output-shaped tensor [Bk, n, *Y.shape[1:]] (Y, GY)."""


class Scalar:
    """A per-layer scalar [Bk]; the proxy's root value."""


TENSOR_TYPES: dict[str, type] = {"w": WeightT, "a": InputT, "y": OutputT}
TYPE_NAMES: dict[type, str] = {WeightT: "weight", InputT: "input", OutputT: "output", Scalar: "scalar"}


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1)


def _bcast(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], *([1] * (like.dim() - 1)))


def _var(x: torch.Tensor) -> torch.Tensor:
    f = _flat(x)
    return (f - f.mean(1, keepdim=True)).pow(2).mean(1)


def _normalize(x: torch.Tensor) -> torch.Tensor:
    f = _flat(x)
    d = f - f.mean(1, keepdim=True)
    return (d / (d.pow(2).mean(1, keepdim=True).sqrt() + EPS)).reshape(x.shape)


def _minmax(x: torch.Tensor) -> torch.Tensor:
    f = _flat(x)
    lo, hi = f.min(1, keepdim=True).values, f.max(1, keepdim=True).values
    return ((f - lo) / (hi - lo + EPS)).reshape(x.shape)


def _softmax(x: torch.Tensor) -> torch.Tensor:
    return torch.softmax(_flat(x), dim=1).reshape(x.shape)


def _pdiv(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a * b / (b * b + EPS). Ops that write into their own fresh temporaries (here and in the ops below)
    compute the same values bit for bit with fewer passes over memory, which bounds a fitness pass over
    large packed tensors."""
    den = b * b
    den += EPS
    return (a * b).div_(den)


def _recip(x: torch.Tensor) -> torch.Tensor:
    den = x * x
    den += EPS
    return torch.div(x, den, out=den)


def _log(x: torch.Tensor) -> torch.Tensor:
    t = x.abs()
    t += LOG_EPS
    return t.log_()


def _scale(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return x * _bcast(s, x)


def _safe_over(x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """x / d, and 0 where d == 0 (a scale-free ratio: no additive epsilon that would set a scale)."""
    nz = d != 0
    return torch.where(nz, x / torch.where(nz, d, torch.ones_like(d)), torch.zeros_like(x))


def _net_mean(x: torch.Tensor) -> torch.Tensor:
    return _safe_over(x, x.mean(-1, keepdim=True))


def _net_max(x: torch.Tensor) -> torch.Tensor:
    return _safe_over(x, x.abs().amax(-1, keepdim=True))


def _net_rank(x: torch.Tensor) -> torch.Tensor:
    """Average rank (ties share it) among the layers, 0 (smallest) .. 1 (largest); 0.5 for one layer."""
    n = x.shape[-1]
    below = (x.unsqueeze(-2) < x.unsqueeze(-1)).sum(-1)
    equal = (x.unsqueeze(-2) == x.unsqueeze(-1)).sum(-1)
    rank = below.to(x.dtype) + (equal.to(x.dtype) - 1) / 2
    return rank / (n - 1) if n > 1 else torch.full_like(x, 0.5)


# Sympy has no tensor reductions: they are rendered as named functions of the elementwise
# expression inside them (e.g. mean(Abs(W))); NUMPY_HELPERS gives them numeric meaning.
# Network ops are rendered the same way (netmean(x): x over its mean over the layers).
SYMPY_FUNCTIONS = (
    "mean",
    "total",
    "l1",
    "l2",
    "maxabs",
    "std",
    "var",
    "znorm",
    "minmax",
    "softmax",
    "netmean",
    "netmax",
    "netrank",
)
_F = {n: sympy.Function(n) for n in SYMPY_FUNCTIONS}


@dataclass(frozen=True)
class OpSpec:
    """One operation: exact torch semantics and its renderings, in one place."""

    op: str
    kind: str  # unary | layer | reduce | binary | scale | network
    _: KW_ONLY
    fn: Callable[..., torch.Tensor]
    sympy: Callable[..., sympy.Expr]
    latex: str  # format string over the arguments' LaTeX
    python: str  # format string over the arguments' Python (numpy) source
    priority: float = 1.0  # relative sampling weight
    commutative: bool = False
    default: bool = True  # part of the default space (else opt-in with include_ops)

    @property
    def arity(self) -> int:
        return 1 if self.kind in ("unary", "layer", "reduce", "network") else 2


def _ops() -> dict[str, OpSpec]:
    S = sympy
    specs = [
        # elementwise unary (tensors and scalars)
        OpSpec(
            "abs", "unary", fn=torch.abs, sympy=S.Abs, latex=r"\left|{0}\right|", python="np.abs({0})", priority=1.2
        ),
        OpSpec(
            "square",
            "unary",
            fn=torch.square,
            sympy=lambda x: x**2,
            latex=r"\left({0}\right)^{{2}}",
            python="np.square({0})",
            priority=1.2,
        ),
        OpSpec(
            "sqrt",
            "unary",
            fn=lambda x: x.abs().sqrt_(),
            sympy=lambda x: S.sqrt(S.Abs(x)),
            latex=r"\sqrt{{\left|{0}\right|}}",
            python="np.sqrt(np.abs({0}))",
            priority=1.0,
        ),
        OpSpec(
            "log",
            "unary",
            fn=_log,
            sympy=lambda x: S.log(S.Abs(x) + LOG_EPS),
            latex=r"\log\left(\left|{0}\right|+\epsilon\right)",
            python=f"np.log(np.abs({{0}}) + {LOG_EPS!r})",
            priority=1.0,
        ),
        OpSpec(
            "exp",
            "unary",
            fn=lambda x: x.clamp(max=EXP_CLAMP).exp_(),
            sympy=lambda x: S.exp(S.Min(x, EXP_CLAMP)),
            latex=r"e^{{\min\left({0},\,30\right)}}",
            python=f"np.exp(np.minimum({{0}}, {EXP_CLAMP!r}))",
            priority=0.5,
        ),
        OpSpec(
            "relu",
            "unary",
            fn=torch.relu,
            sympy=lambda x: S.Max(x, 0),
            latex=r"\max\left({0},\,0\right)",
            python="np.maximum({0}, 0.0)",
            priority=0.6,
        ),
        OpSpec(
            "sigmoid",
            "unary",
            fn=torch.sigmoid,
            sympy=lambda x: 1 / (1 + S.exp(-x)),
            latex=r"\sigma\left({0}\right)",
            python="(1.0 / (1.0 + np.exp(-({0}))))",
            priority=0.5,
        ),
        OpSpec(
            "neg",
            "unary",
            fn=torch.neg,
            sympy=lambda x: -x,
            latex=r"-\left({0}\right)",
            python="(-({0}))",
            priority=0.5,
        ),
        OpSpec(
            "recip",
            "unary",
            fn=_recip,
            sympy=lambda x: x / (x**2 + EPS),
            latex=r"\frac{{1}}{{{0}}}",
            python=f"(({{0}}) / (np.square({{0}}) + {EPS!r}))",
            priority=0.8,
        ),
        OpSpec(
            "sign",
            "unary",
            fn=torch.sign,
            sympy=S.sign,
            latex=r"\operatorname{{sign}}\left({0}\right)",
            python="np.sign({0})",
            priority=0.3,
        ),
        OpSpec(
            "tanh",
            "unary",
            fn=torch.tanh,
            sympy=S.tanh,
            latex=r"\tanh\left({0}\right)",
            python="np.tanh({0})",
            priority=0.5,
            default=False,
        ),
        OpSpec(
            "cube",
            "unary",
            fn=lambda x: x * x * x,
            sympy=lambda x: x**3,
            latex=r"\left({0}\right)^{{3}}",
            python="(({0}) ** 3)",
            priority=0.5,
            default=False,
        ),
        # per-layer standardisation (tensors only)
        OpSpec(
            "normalize",
            "layer",
            fn=_normalize,
            sympy=_F["znorm"],
            latex=r"\operatorname{{z}}\left({0}\right)",
            python="znorm({0})",
            priority=0.5,
        ),
        OpSpec(
            "minmax",
            "layer",
            fn=_minmax,
            sympy=_F["minmax"],
            latex=r"\operatorname{{minmax}}\left({0}\right)",
            python="minmax({0})",
            priority=0.5,
        ),
        OpSpec(
            "softmax",
            "layer",
            fn=_softmax,
            sympy=_F["softmax"],
            latex=r"\operatorname{{softmax}}\left({0}\right)",
            python="softmax({0})",
            priority=0.3,
        ),
        # reductions to a per-layer scalar
        OpSpec(
            "mean",
            "reduce",
            fn=lambda x: _flat(x).mean(1),
            sympy=_F["mean"],
            latex=r"\operatorname{{mean}}\left({0}\right)",
            python="mean({0})",
            priority=1.5,
        ),
        OpSpec(
            "sum",
            "reduce",
            fn=lambda x: _flat(x).sum(1),
            sympy=_F["total"],
            latex=r"\sum\left({0}\right)",
            python="total({0})",
            priority=1.5,
        ),
        OpSpec(
            "l1",
            "reduce",
            fn=lambda x: _flat(x).abs().sum(1),
            sympy=_F["l1"],
            latex=r"\left\|{0}\right\|_{{1}}",
            python="l1({0})",
            priority=1.2,
        ),
        OpSpec(
            "l2",
            "reduce",
            fn=lambda x: _flat(x).pow(2).sum(1).sqrt(),
            sympy=_F["l2"],
            latex=r"\left\|{0}\right\|_{{2}}",
            python="l2({0})",
            priority=1.5,
        ),
        OpSpec(
            "maxabs",
            "reduce",
            fn=lambda x: _flat(x).abs().max(1).values,
            sympy=_F["maxabs"],
            latex=r"\left\|{0}\right\|_{{\infty}}",
            python="maxabs({0})",
            priority=0.8,
        ),
        OpSpec(
            "std",
            "reduce",
            fn=lambda x: _var(x).sqrt(),
            sympy=_F["std"],
            latex=r"\operatorname{{std}}\left({0}\right)",
            python="std({0})",
            priority=0.8,
        ),
        OpSpec(
            "var",
            "reduce",
            fn=_var,
            sympy=_F["var"],
            latex=r"\operatorname{{var}}\left({0}\right)",
            python="var({0})",
            priority=0.8,
        ),
        # binary on same-typed values
        OpSpec(
            "add",
            "binary",
            fn=torch.add,
            sympy=lambda a, b: a + b,
            latex=r"\left({0}+{1}\right)",
            python="(({0}) + ({1}))",
            priority=1.0,
            commutative=True,
        ),
        OpSpec(
            "sub",
            "binary",
            fn=torch.sub,
            sympy=lambda a, b: a - b,
            latex=r"\left({0}-{1}\right)",
            python="(({0}) - ({1}))",
            priority=0.8,
        ),
        OpSpec(
            "mul",
            "binary",
            fn=torch.mul,
            sympy=lambda a, b: a * b,
            latex=r"{0}\cdot {1}",
            python="(({0}) * ({1}))",
            priority=1.5,
            commutative=True,
        ),
        OpSpec(
            "div",
            "binary",
            fn=_pdiv,
            sympy=lambda a, b: a * b / (b**2 + EPS),
            latex=r"\frac{{{0}}}{{{1}}}",
            python=f"(({{0}}) * ({{1}}) / (np.square({{1}}) + {EPS!r}))",
            priority=1.2,
        ),
        OpSpec(
            "max",
            "binary",
            fn=torch.maximum,
            sympy=S.Max,
            latex=r"\max\left({0},\,{1}\right)",
            python="np.maximum({0}, {1})",
            priority=0.4,
            commutative=True,
        ),
        OpSpec(
            "min",
            "binary",
            fn=torch.minimum,
            sympy=S.Min,
            latex=r"\min\left({0},\,{1}\right)",
            python="np.minimum({0}, {1})",
            priority=0.4,
            commutative=True,
        ),
        # a tensor times a per-layer scalar (how b, 2^-b, traces enter tensor formulas)
        OpSpec(
            "scale",
            "scale",
            fn=_scale,
            sympy=lambda x, s: x * s,
            latex=r"{1}\cdot {0}",
            python="scale({0}, {1})",
            priority=0.8,
        ),
        # scale-free normalizations of a per-layer scalar over the network's layers (scalars only)
        OpSpec(
            "netmean",
            "network",
            fn=_net_mean,
            sympy=_F["netmean"],
            latex=r"\frac{{{0}}}{{\operatorname{{mean}}_{{\ell}}\,{0}}}",
            python="netmean({0})",
            priority=0.6,
        ),
        OpSpec(
            "netmax",
            "network",
            fn=_net_max,
            sympy=_F["netmax"],
            latex=r"\frac{{{0}}}{{\max_{{\ell}}\left|{0}\right|}}",
            python="netmax({0})",
            priority=0.6,
        ),
        OpSpec(
            "netrank",
            "network",
            fn=_net_rank,
            sympy=_F["netrank"],
            latex=r"\operatorname{{rank}}_{{\ell}}\left({0}\right)",
            python="netrank({0})",
            priority=0.4,
        ),
    ]
    return {s.op: s for s in specs}


OPS: dict[str, OpSpec] = _ops()
SCALAR_KINDS = ("unary", "binary")  # op kinds that also exist on scalars
SCALAR_ONLY_KINDS = ("network",)  # op kinds that exist on scalars only


@dataclass(frozen=True)
class TerminalSpec:
    """A statistic the proxy reads: its type, renderings and per-layer value, in one place.

    A *raw* terminal reads `raw(stats, layer)` (default: the LayerStats attribute `name`) in
    the statistics' layout; `terminals.layer_terminal` adds the leading bit dimension. A
    *derived* terminal sets `derive`: its per-layer value from the per-layer values of the
    terminals in `needs` (dict name -> tensor, same semantics as OpSpec.fn), and `python`:
    the same in numpy over the dict `t` of terminal arrays (for exported proxies). A scalar
    with a `raw` reader (other than the bits) gives `python`: its value in numpy from the
    exported module's `stats`, layer index `i` and `layer`; when it computes from LayerStats
    tensors it names them in `reads` (presets follow them).
    """

    name: str
    type: type
    _: KW_ONLY
    bit_dependent: bool
    description: str
    latex: str
    priority: float = 1.0
    default: bool = True  # part of the "full" preset (a new terminal changes the default space: keep it False)
    raw: Callable[[Any, int], Any] | None = None  # (NetworkStats, layer index) -> value
    reads: tuple[str, ...] = ()  # the LayerStats tensors a `raw` reader computes from (presets follow them)
    derive: Callable[[dict[str, torch.Tensor]], torch.Tensor] | None = None
    needs: tuple[str, ...] = ()
    python: str = ""
    render_sympy: Callable[[], sympy.Expr] | None = None  # default: the symbol `name`

    def symbol(self) -> sympy.Expr:
        return self.render_sympy() if self.render_sympy else sympy.Symbol(self.name)


def _bits(stats: Any, layer: int) -> tuple[int, ...]:
    return tuple(stats.bits)


# NetworkStats.meta entries that emq.sensitivity.attach_sensitivity fills: the measurement with the other
# slots at 8 bits, and in context (the other slots at the middle bit-width of the bit set)
MEASURED_KEY = "sensitivity"
MEASURED_MID_KEY = "sensitivity_mid"


def _measured(metric: str, key: str = MEASURED_KEY) -> Callable[[Any, int], tuple[float, ...]]:
    """A layer's share of its slot's measured sensitivity (emq.sensitivity, the measurement statistics keep
    under `key`), one value per bit: the slot's value divided by the number of layers tied into it, so the
    terminal summed into slots is the measured table itself."""

    def raw(stats: Any, layer: int) -> tuple[float, ...]:
        measured = stats.meta.get(key)
        if not measured:
            names = ", ".join(n for n, k in MEASURED_TERMINALS.items() if k == key)
            flag = "--sensitivity-in-context" if key == MEASURED_MID_KEY else "--sensitivity"
            raise EmqError(
                f"the statistics hold no measured sensitivity for the terminals {names}: attach it with "
                f"emq.sensitivity.attach_sensitivity, or compute it with `emq stats {flag}`"
            )
        if list(measured["bits"]) != list(stats.bits):
            raise EmqError(
                f"the measured sensitivity is for bits {measured['bits']}, the statistics for {list(stats.bits)}: "
                "measure it again"
            )
        slot = stats.layer_slot[layer]
        share = stats.layer_slot.count(slot)
        return tuple(float(v) / share for v in measured["tables"][metric][slot])

    return raw


def _slot_share(stats: Any, layer: int) -> float:
    return 1.0 / list(stats.layer_slot).count(stats.layer_slot[layer])


def _input_variance(stats: Any, layer: int) -> float:
    """Over all stored samples, not the first act_samples: the statistic QE's entropy reads."""
    return float(stats.layers[layer].A.double().var())


# Raw statistics (LayerStats fields and the bits), then derived terminals. The order is the
# order of every preset and of the DEAP terminal set, so new terminals go at the end.
_TERMINAL_LIST = [
    TerminalSpec("W", WeightT, bit_dependent=False, description="weights", latex=r"W"),
    TerminalSpec("G", WeightT, bit_dependent=False, description="task-loss gradient of the weights", latex=r"G"),
    TerminalSpec(
        "VG", WeightT, bit_dependent=False, description="data-free virtual gradient (Synflow-style)", latex=r"G_{v}"
    ),
    TerminalSpec("H", WeightT, bit_dependent=False, description="Hessian diagonal (Hutchinson)", latex=r"H_{d}"),
    TerminalSpec(
        "Q", WeightT, bit_dependent=True, description="quantized weights Q_b(W)", latex=r"Q_{b}(W)", priority=1.5
    ),
    TerminalSpec(
        "E",
        WeightT,
        bit_dependent=True,
        description="weight quantization noise Q_b(W) - W",
        latex=r"E_{b}",
        priority=2.0,
    ),
    TerminalSpec("A", InputT, bit_dependent=False, description="layer input activations", latex=r"A"),
    TerminalSpec("AE", InputT, bit_dependent=False, description="activation quantization noise", latex=r"E_{A}"),
    TerminalSpec("Y", OutputT, bit_dependent=False, description="layer output", latex=r"Y"),
    TerminalSpec("GY", OutputT, bit_dependent=False, description="gradient w.r.t. the layer output", latex=r"G_{Y}"),
    TerminalSpec(
        "b", Scalar, bit_dependent=True, description="the layer's bit-width", latex=r"b", priority=2.0, raw=_bits
    ),
    TerminalSpec(
        "pow2b",
        Scalar,
        bit_dependent=True,
        description="2^-b (quantization step factor)",
        latex=r"2^{-b}",
        priority=1.5,
        derive=lambda t: torch.pow(2.0, -t["b"]),
        needs=("b",),
        python="2.0 ** -t['b']",
        render_sympy=lambda: sympy.Integer(2) ** (-sympy.Symbol("b")),
    ),
    TerminalSpec("trace", Scalar, bit_dependent=False, description="Hessian trace Tr(H)", latex=r"\operatorname{Tr}H"),
    TerminalSpec("eig", Scalar, bit_dependent=False, description="top Hessian eigenvalue", latex=r"\lambda_{\max}"),
    TerminalSpec("params", Scalar, bit_dependent=False, description="weight parameters of the layer", latex=r"n"),
    TerminalSpec(
        "macs", Scalar, bit_dependent=False, description="multiply-accumulates of the layer", latex=r"\mathrm{MACs}"
    ),
    TerminalSpec("out_channels", Scalar, bit_dependent=False, description="output channels", latex=r"C_{out}"),
    TerminalSpec(
        "SG",
        WeightT,
        bit_dependent=False,
        description="Synflow gradient dR/d|W| of the |parameter|-linearised network",
        latex=r"G_{s}",
    ),
    TerminalSpec(
        "FD",
        WeightT,
        bit_dependent=False,
        description="diagonal empirical Fisher E_x[g_x^2] (per-sample gradients)",
        latex=r"F_{d}",
    ),
    TerminalSpec(
        "varA",
        Scalar,
        bit_dependent=False,
        description=(
            "variance of the layer input over every stored calibration sample (unbiased; QE's entropy is 0.5 log(2 "
            "pi e varA))"
        ),
        latex=r"\sigma^{2}_{A}",
        priority=0.6,
        raw=_input_variance,
        reads=("A",),
        python="np.array([np.asarray(layer.A, dtype=np.float64).var(ddof=1)])",
    ),
    TerminalSpec(
        "tied",
        Scalar,
        bit_dependent=False,
        description=(
            "the layer's share of its bit slot, 1/k for k layers tied into one slot (per-slot forms, e.g. bitsum)"
        ),
        latex=r"\tfrac{1}{k}",
        priority=0.3,
        raw=_slot_share,
        python="np.array([1.0 / list(stats.layer_slot).count(stats.layer_slot[i])])",
    ),
    TerminalSpec(
        "MKL",
        Scalar,
        bit_dependent=True,
        description="measured sensitivity: KL(FP || the layer's slot alone at b bits), the layer's share",
        latex=r"S^{\mathrm{KL}}_{b}",
        default=False,
        raw=_measured("kl"),
    ),
    TerminalSpec(
        "MDL",
        Scalar,
        bit_dependent=True,
        description="measured sensitivity: loss change with the layer's slot alone at b bits, the layer's share",
        latex=r"S^{\Delta L}_{b}",
        default=False,
        raw=_measured("loss"),
    ),
    TerminalSpec(
        "MNSR",
        Scalar,
        bit_dependent=True,
        description=(
            "measured sensitivity: output noise-to-signal ratio with the layer's slot alone at b bits, the layer's "
            "share"
        ),
        latex=r"S^{\mathrm{NSR}}_{b}",
        default=False,
        raw=_measured("nsr"),
    ),
    TerminalSpec(
        "MKLM",
        Scalar,
        bit_dependent=True,
        description=(
            "measured sensitivity in context: KL(FP || the layer's slot at b bits, every other slot at the middle "
            "bit-width of the bit set), the layer's share"
        ),
        latex=r"S^{\mathrm{KL,mid}}_{b}",
        default=False,
        raw=_measured("kl", MEASURED_MID_KEY),
    ),
]
# the measured terminals and the statistics' meta entry each reads
MEASURED_TERMINALS = {"MKL": MEASURED_KEY, "MDL": MEASURED_KEY, "MNSR": MEASURED_KEY, "MKLM": MEASURED_MID_KEY}


def _add_terminal(out: Registry[TerminalSpec], t: TerminalSpec) -> TerminalSpec:
    """Add `t` to `out`, refusing a taken name and a derived terminal whose inputs are not in `out` yet."""
    if (t.derive is None) != (not t.needs) or (t.derive is not None and not t.python):
        raise EmqError(f"terminal {t.name!r}: a derived terminal sets derive, needs and python together")
    if t.reads and t.raw is None:
        raise EmqError(f"terminal {t.name!r}: only a raw reader reads LayerStats tensors")
    unknown = [n for n in t.needs if n not in out]
    if unknown:
        raise EmqError(f"terminal {t.name!r} needs {unknown}, which are not defined before it")
    return out.add(t.name, t)


def _registry(specs: list[TerminalSpec]) -> Registry[TerminalSpec]:
    """Name -> spec in list order, refusing duplicates and derived terminals whose inputs are unknown or later."""
    out: Registry[TerminalSpec] = Registry("terminal", "terminals")
    for t in specs:
        _add_terminal(out, t)
    return out


TERMINALS: Registry[TerminalSpec] = _registry(_TERMINAL_LIST)


def register_terminal(spec: TerminalSpec) -> TerminalSpec:
    """Make a terminal usable by name (search spaces, `--terminals`, exported formulas), checked like the
    built-in ones. A module of `search_space/derived/` that calls it is imported with this one, so a new
    derived statistic is one new file; there `default=True` joins the default space (the presets are
    built after those modules, so a terminal registered later never joins a preset)."""
    return _add_terminal(TERMINALS, spec)


for _plugin in pkgutil.iter_modules(importlib.import_module("emq.search_space.derived").__path__):
    importlib.import_module(f"emq.search_space.derived.{_plugin.name}")  # registers its terminals


def raw_sources(name: str) -> set[str]:
    """The raw terminals a terminal is computed from (itself when it is raw)."""
    spec = TERMINALS[name]
    return {name, *spec.reads} if spec.derive is None else set().union(*(raw_sources(n) for n in spec.needs))


HESSIAN_TERMINALS = ("H", "trace", "eig")
PRESETS: dict[str, tuple[str, ...]] = {
    "full": tuple(n for n, t in TERMINALS.items() if t.default),
    # the full space and the measured sensitivity (L x B single-slot PTQ runs per network, bundled for shipped benches)
    "measured": (*(n for n, t in TERMINALS.items() if t.default), *MEASURED_TERMINALS),
    "weights-only": ("W", "Q", "E", "b", "pow2b", "params", "out_channels"),
    "no-hessian": tuple(n for n, t in TERMINALS.items() if t.default and not raw_sources(n) & set(HESSIAN_TERMINALS)),
    "no-activations": tuple(
        n
        for n, t in TERMINALS.items()
        if t.default and all(TERMINALS[r].type not in (InputT, OutputT) for r in raw_sources(n))
    ),
}


@dataclass(frozen=True)
class PrimSpec:
    """A typed primitive of the DEAP set: an op applied to one value type."""

    name: str  # unique, e.g. "abs_w", "mul_s"
    op: OpSpec
    in_types: tuple[type, ...]
    out_type: type


def typed_primitives(ops: dict[str, OpSpec] | None = None) -> dict[str, PrimSpec]:
    """Every op instantiated on every value type it applies to."""
    out: dict[str, PrimSpec] = {}
    for spec in (ops or OPS).values():
        if spec.kind in SCALAR_ONLY_KINDS:
            out[f"{spec.op}_s"] = PrimSpec(f"{spec.op}_s", spec, (Scalar,), Scalar)
            continue
        for code, T in TENSOR_TYPES.items():
            ins = {"unary": (T,), "layer": (T,), "reduce": (T,), "binary": (T, T), "scale": (T, Scalar)}[spec.kind]
            out[f"{spec.op}_{code}"] = PrimSpec(f"{spec.op}_{code}", spec, ins, Scalar if spec.kind == "reduce" else T)
        if spec.kind in SCALAR_KINDS:
            out[f"{spec.op}_s"] = PrimSpec(f"{spec.op}_s", spec, (Scalar,) * spec.arity, Scalar)
    return out


PRIMITIVES: dict[str, PrimSpec] = typed_primitives()

# Numeric meaning of the named reductions of the sympy/Python renderings (numpy arrays with
# the same leading-bit-dimension convention as the torch semantics).
NUMPY_HELPERS = """
import numpy as np

def _flat(x):
    x = np.asarray(x, dtype=np.float64)
    return x.reshape(x.shape[0], -1)

def _col(s, like):
    return np.asarray(s).reshape(-1, *([1] * (np.ndim(like) - 1)))

def mean(x): return _flat(x).mean(1)
def total(x): return _flat(x).sum(1)
def l1(x): return np.abs(_flat(x)).sum(1)
def l2(x): return np.sqrt(np.square(_flat(x)).sum(1))
def maxabs(x): return np.abs(_flat(x)).max(1)
def var(x):
    f = _flat(x)
    return np.square(f - f.mean(1, keepdims=True)).mean(1)
def std(x): return np.sqrt(var(x))
def znorm(x):
    f = _flat(x)
    d = f - f.mean(1, keepdims=True)
    return (d / (np.sqrt(np.square(d).mean(1, keepdims=True)) + EPS)).reshape(np.shape(x))
def minmax(x):
    f = _flat(x)
    lo, hi = f.min(1, keepdims=True), f.max(1, keepdims=True)
    return ((f - lo) / (hi - lo + EPS)).reshape(np.shape(x))
def softmax(x):
    f = _flat(x)
    e = np.exp(f - f.max(1, keepdims=True))
    return (e / e.sum(1, keepdims=True)).reshape(np.shape(x))
def scale(x, s): return np.asarray(x) * _col(s, x)

# network ops: x is [Bk, L], one column per layer of the network
def _safe_over(x, d):
    x, d = np.broadcast_arrays(np.asarray(x, dtype=np.float64), d)
    return np.divide(x, d, out=np.zeros_like(x), where=d != 0)
def netmean(x): return _safe_over(x, np.asarray(x, dtype=np.float64).mean(-1, keepdims=True))
def netmax(x): return _safe_over(x, np.abs(np.asarray(x, dtype=np.float64)).max(-1, keepdims=True))
def netrank(x):
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[-1]
    below = (x[..., None, :] < x[..., :, None]).sum(-1)
    equal = (x[..., None, :] == x[..., :, None]).sum(-1)
    rank = below + (equal - 1) / 2.0
    return rank / (n - 1) if n > 1 else np.full_like(x, 0.5)
def stack_layers(values):  # per-layer scalars [Bk] of every layer -> [Bk, L], Bk broadcast to the largest
    values = [np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in values]
    bk = max(v.shape[0] for v in values)
    return np.stack([np.broadcast_to(v, (bk,)) for v in values], axis=1)
""".replace("EPS", repr(EPS))
