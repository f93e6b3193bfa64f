"""Desired-state builders, one module per backend type."""
