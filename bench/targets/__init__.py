"""Targets: per-platform request building and answer classification (one module per platform).

Each module offers ``make_classifier(...) -> bench.engine.base.Classifier`` plus its URL/header helpers.
"""
