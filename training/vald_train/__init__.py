"""Phantoms with ground truth, and the recipe that trains the shipped demo model (not imported by the runtime)."""
