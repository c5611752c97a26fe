"""``python -m cgnet.benchmark``: the command line (see :mod:`cgnet.benchmark`)."""

from cgnet.benchmark.command import main

if __name__ == "__main__":
    main()
