"""A package that ships a driver under a name blokrun already uses (``redis``)."""

from blokrun.datasources import Driver

DRIVER = Driver("redis", "blokrun.datasources.memory:create")
