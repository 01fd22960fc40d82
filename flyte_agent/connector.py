"""Placeholder so flytekit's plugin loader finds the entry point while the connector is written."""
