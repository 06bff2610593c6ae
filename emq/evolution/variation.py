"""Variation operators: crossover and mutation of typed proxy trees.

DEAP's `gp.cxOnePoint` picks the crossover type with `random.choice(list(set(types)))`; a
set of classes iterates in memory-address order, which changes from process to process,
so the same seed gave different campaigns in different processes (and after a resume).
`cx_one_point` is the same operator with the common types in a fixed order (by name).
"""

from __future__ import annotations

import random
from collections import defaultdict

from deap import gp

from emq.search_space.pset import SearchSpace, generate


def cx_one_point(ind1: gp.PrimitiveTree, ind2: gp.PrimitiveTree) -> tuple[gp.PrimitiveTree, gp.PrimitiveTree]:
    """Swap a random subtree of one parent with a random subtree of the same type of the other."""
    if len(ind1) < 2 or len(ind2) < 2:
        return ind1, ind2
    types1: dict[type, list[int]] = defaultdict(list)
    types2: dict[type, list[int]] = defaultdict(list)
    for idx, node in enumerate(ind1[1:], 1):
        types1[node.ret].append(idx)
    for idx, node in enumerate(ind2[1:], 1):
        types2[node.ret].append(idx)
    common = sorted(set(types1) & set(types2), key=lambda t: (t.__module__, t.__qualname__))
    if common:
        type_ = random.choice(common)
        slice1 = ind1.searchSubtree(random.choice(types1[type_]))
        slice2 = ind2.searchSubtree(random.choice(types2[type_]))
        ind1[slice1], ind2[slice2] = ind2[slice2], ind1[slice1]
    return ind1, ind2


def mutate(ind: gp.PrimitiveTree, space: SearchSpace) -> tuple[gp.PrimitiveTree]:
    """One of several mutations, chosen at random: subtree, node replacement, shrink, insert, constant."""
    pset = space.pset
    which = random.randrange(5)
    if which == 0:
        return gp.mutUniform(ind, lambda pset, type_: generate(space, 0, 2, full=False, type_=type_), pset)
    if which == 1:
        return gp.mutNodeReplacement(ind, pset)
    if which == 2:
        return gp.mutShrink(ind)
    if which == 3:
        return gp.mutInsert(ind, pset)
    return gp.mutEphemeral(ind, "one")
