"""Derived statistics added as plugins: each module here registers terminals with `register_terminal`.

Every module of this folder is imported when `emq.search_space.primitives` is, so a new derived
statistic is one new file (plus its test): a `TerminalSpec` whose `derive` computes it from
terminals already defined, its numpy form `python` for exported proxies, its LaTeX and its
description, for example

    from emq.search_space.primitives import TerminalSpec, WeightT, register_terminal

    register_terminal(
        TerminalSpec(
            "GW",
            WeightT,
            bit_dependent=False,
            description="gradient times weight (SNIP's saliency)",
            latex=r"G \\odot W",
            default=False,
            derive=lambda t: t["G"] * t["W"],
            needs=("G", "W"),
            python="t['G'] * t['W']",
        )
    )

A module here is imported while `primitives` itself loads, so from it, it may import only what is
defined above its terminal registry (`TerminalSpec`, the tensor types `WeightT` / `InputT` / `OutputT` /
`Scalar`, `register_terminal`), not `PRIMITIVES`, `PRESETS` or the modules that import `primitives`.

It is then a name like any other: `--terminals W,GW,b` on `emq search`, `make_space(terminals=...)`,
and exported formulas that use it reload wherever this module is installed. `default=True` would put it
in the default space, which changes every default campaign: keep it False unless that is the point.
"""
