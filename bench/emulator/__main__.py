"""`python -m bench.emulator [flags]` is `bench serve [flags]`."""

import sys

from bench.cli import main

sys.exit(main(["serve", *sys.argv[1:]]))
