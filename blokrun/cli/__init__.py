"""The ``blokrun`` command line: a thin layer over :class:`blokrun.Runner`."""
