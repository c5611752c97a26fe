"""``python -m cgnet.report SWEEP [--size H W] [--latency] [--device D] [--repeats N] [--out DIR]``.

Kept to the call alone: the command lives in :mod:`cgnet.report.command`, where tests import it.
"""

import sys

from cgnet.report.command import main

if __name__ == "__main__":
    sys.exit(main())
