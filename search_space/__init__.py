"""The proxy search space: statistics (terminals), primitives, the typed DEAP set, evaluation."""
