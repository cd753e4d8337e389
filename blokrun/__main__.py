"""``python -m blokrun`` is the ``blokrun`` command."""

from blokrun.cli.main import main

if __name__ == "__main__":
    main()
