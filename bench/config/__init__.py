"""Typed config of every scenario section, as pure dataclass parsers (a leaf: imports only errors and units).

``bench.scenario`` reads a scenario file once and calls these parsers, so the run core, the auth layer, the
preflight and the SLO gate all receive typed config without the scenario reader importing them (nor they it).
The ``[emulator]`` section is the one exception: its parser belongs to the emulator (fault specs, platform
options), and only the session layer may import the emulator, so bench.session validates it (see
docs/architecture.md).
"""
