"""Moved to bench.targets.ubiops_runner (the UbiOps target's own data plane); kept for existing imports."""

from bench.targets.ubiops_runner import UbiOpsStats, run_ubiops

__all__ = ["UbiOpsStats", "run_ubiops"]
