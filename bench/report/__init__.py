"""Run reports: the model (model.py), the Arrow file (writer.py / reader.py), summary, verdict and merge.

Import the submodules directly (``from bench.report.reader import read_report``); this package keeps no
imports of its own so `bench --help` stays fast.
"""
