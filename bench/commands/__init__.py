"""CLI subcommands; see bench.cli."""
