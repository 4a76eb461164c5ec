"""Configs: the schema every run is checked against, and config files loaded by path."""
