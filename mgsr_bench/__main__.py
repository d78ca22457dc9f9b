"""``python -m mgsr_bench`` (and ``accelerate launch -m mgsr_bench``) runs the CLI."""

import sys

from mgsr_bench.cli.main import main

sys.exit(main())
