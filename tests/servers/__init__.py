"""Throwaway servers for the tests: each module starts its own on a free loopback port.

A module ``tests/servers/<driver>.py`` exposes ``launch(workdir: Path) -> ThrowawayServer``
(sync; raises :class:`ServerUnavailable` with the reason when the server cannot be had
here, which the fixtures turn into a skip that says why). Nothing here touches services
that someone else started: every server gets a fresh port and a fresh folder, and is
stopped (by PID) when the test session ends.
"""
