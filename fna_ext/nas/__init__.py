"""Architecture adaptation: the super network over a seed, the cost table, the differentiable
search loop and the derivation of the target architecture."""
