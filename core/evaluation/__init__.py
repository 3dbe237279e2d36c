"""Metrics, student protocols, set assessment, the benchmark and reports."""
