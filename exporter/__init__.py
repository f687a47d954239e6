"""Prometheus exporter for AI assistant runs."""

__version__ = "0.1.0"
