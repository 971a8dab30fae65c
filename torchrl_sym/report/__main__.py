"""``python -m torchrl_sym.report``: see :func:`torchrl_sym.report.cli.main`."""

import sys

from torchrl_sym.report.cli import main

if __name__ == "__main__":
    sys.exit(main())
