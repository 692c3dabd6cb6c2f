"""Measured and reference device profiles, shipped as package data."""
