"""Seed families: the block types a seed network is made of and everything that depends on them."""
