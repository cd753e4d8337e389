"""Command-line values to Python values: a new run's inputs, ``--set``, JSON, checkpoints.

Bad values are :class:`~blokrun.cli.common.Usage` errors (exit 2) naming the option.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from blokrun.cli.common import Usage

if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

__all__ = [
    "add_new_run_arguments",
    "checkpoint_ref",
    "parse_json",
    "parse_sets",
    "read_inputs",
]


def add_new_run_arguments(parser: argparse.ArgumentParser) -> None:
    """``FILE [--input JSON | --input-file FILE] [--request-id ID]`` (``run``, ``submit``)."""
    parser.add_argument("file", help="the workflow JSON file")
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--input", metavar="JSON", help="the run's inputs as a JSON object")
    src.add_argument("--input-file", metavar="FILE", help="a file holding the inputs (JSON object)")
    parser.add_argument("--request-id", metavar="ID", help="the run's id (default: a random one)")
    add_tag_argument(parser, "a tag kept with the run, to filter runs on (repeatable)")


def add_set_argument(parser: argparse.ArgumentParser) -> None:
    """``--set KEY=VALUE`` (``resume``, ``fork``): vars edited first."""
    parser.add_argument(
        "--set",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="edit vars first (VALUE is JSON, else text; KEY may be a.b.c)",
    )


def add_tag_argument(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--tag", metavar="KEY=VALUE", action="append", default=[], help=help)


def parse_tags(items: Sequence[str]) -> dict[str, str]:
    """``--tag KEY=VALUE`` items as a mapping (VALUE as text)."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise Usage(f"--tag {item!r}: expected KEY=VALUE")
        out[key] = value
    return out


def read_inputs(args: argparse.Namespace) -> dict[str, Any]:
    """The JSON object of ``--input`` or ``--input-file`` (``{}`` without either)."""
    if args.input is not None:
        raw, where = args.input.encode(), "--input"
    elif args.input_file is not None:
        where = f"--input-file {args.input_file}"
        try:
            raw = Path(args.input_file).read_bytes()
        except OSError as exc:
            raise Usage(f"{where}: cannot read: {exc.strerror or exc}") from None
    else:
        return {}
    value = parse_json(raw, where)
    if not isinstance(value, dict):
        raise Usage(f"{where}: expected a JSON object, got {type(value).__name__}")
    return value


def parse_json(raw: str | bytes, where: str) -> Any:
    """``raw`` as JSON; a :class:`Usage` error saying where it is invalid."""
    import orjson

    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Usage(
            f"{where}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None


def parse_sets(items: Sequence[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` items as a mapping: VALUE as JSON, else as text."""
    import orjson

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise Usage(f"--set {item!r}: expected KEY=VALUE")
        try:
            out[key] = orjson.loads(raw)
        except orjson.JSONDecodeError:
            out[key] = raw
    return out


def checkpoint_ref(text: str) -> dict[str, Any]:
    """A checkpoint as ``Runner.state_at`` takes it: ``#N`` or ``N`` is sequence number N,
    anything else a step name."""
    digits = text.removeprefix("#")
    if digits.isdigit():
        return {"seq": int(digits)}
    return {"step": text}
