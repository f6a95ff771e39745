"""Toy components for hardened: the ``toy-search`` attack and the ``toy-brightness`` score."""
