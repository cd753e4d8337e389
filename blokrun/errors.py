"""The one exception tree of blokrun.

Every error blokrun raises on purpose derives from :class:`BlokrunError`; driver
exceptions are translated at the driver boundary (``raise ... from exc``) so callers
never need to import a driver library to catch a failure::

    BlokrunError
    ├── ConfigError                 bad DATASOURCE_* / BLOKRUN_* environment (names the variable)
    │   └── MissingExtraError       the driver's optional dependency is not installed
    ├── ArgumentError               an unusable argument to the API (names it); also a ValueError
    ├── WorkflowError               an unusable workflow file (file, $.json.path, expected)
    │   └── ExpressionError         a ${...} expression that does not parse or evaluate
    ├── DatasourceError             a datasource operation failed (names the datasource, key)
    │   ├── DatasourceUnavailable   cannot connect / timed out / server went away
    │   ├── DatasourceAccessError   ctx.datasource() on a name the workflow did not list
    │   └── RecordError             stored bytes that fail their checksum or cannot be decoded
    │       ├── FormatVersionError  a record written by a newer blokrun
    │       └── KeyMissing          a record encrypted with a key this process lacks
    ├── ValueNotStorable            a value that cannot be checkpointed (names its path)
    └── RunError                    a run failed (carries request_id and step)
        ├── StepFailed              the step's node raised; ``__cause__`` is the node's exception
        ├── CheckpointError         saving a checkpoint failed (names datasource and key)
        ├── LeaseLost               another process took the run over; this one stopped writing
        └── ResumeError             a run cannot be resumed
            ├── RunNotFound         no head record and no checkpoint for the request id
            ├── RunExists           ``run`` with the id of a run that exists (resume it, or restart)
            ├── RunBusy             another process holds the run's lease (resumed elsewhere)
            └── DefinitionChanged   the workflow changed steps that already ran (use force)

Messages never contain secrets: URLs go through :func:`blokrun.config.mask_url` first.
"""

from __future__ import annotations

__all__ = [
    "ArgumentError",
    "BlokrunError",
    "CheckpointError",
    "ConfigError",
    "DatasourceAccessError",
    "DatasourceError",
    "DatasourceUnavailable",
    "DefinitionChanged",
    "ExpressionError",
    "FormatVersionError",
    "KeyMissing",
    "LeaseLost",
    "MissingExtraError",
    "RecordError",
    "ResumeError",
    "RunBusy",
    "RunError",
    "RunExists",
    "RunNotFound",
    "StepFailed",
    "ValueNotStorable",
    "WorkflowError",
]


class BlokrunError(Exception):
    """Base class of every error raised by blokrun."""


class ConfigError(BlokrunError):
    """The environment configuration is unusable; the message names the variable."""

    def __init__(self, message: str, *, variable: str | None = None) -> None:
        super().__init__(message)
        self.variable = variable


class ArgumentError(BlokrunError, ValueError):
    """An argument given to the Python API is unusable; ``argument`` names it."""

    def __init__(self, message: str, *, argument: str) -> None:
        super().__init__(message)
        self.argument = argument


class WorkflowError(BlokrunError):
    """A workflow definition cannot be used.

    ``source`` is the file (or ``<dict>``), ``path`` the JSON path (``$.steps[2].inputs.url``).
    """

    def __init__(self, message: str, *, source: str = "<workflow>", path: str | None = "$") -> None:
        self.source = source
        self.path = path
        self.detail = message
        where = f"{source}: {path}" if path else source
        super().__init__(f"{where}: {message}")


class ExpressionError(WorkflowError):
    """An expression does not parse (at load) or cannot be evaluated (at run time)."""

    def __init__(
        self,
        message: str,
        *,
        expression: str = "",
        column: int | None = None,
        source: str = "<workflow>",
        path: str = "$",
    ) -> None:
        self.expression = expression
        self.column = column
        where = f" (column {column})" if column is not None else ""
        text = f"{message}{where}" + (f" in {expression!r}" if expression else "")
        super().__init__(text, source=source, path=path)


class DatasourceError(BlokrunError):
    """A datasource operation failed.

    Drivers raise it without ``datasource``; the :class:`~blokrun.datasources.Datasource`
    wrapper fills in the datasource name and the key before it reaches the caller.
    """

    def __init__(self, message: str, *, datasource: str | None = None, key: str | None = None):
        super().__init__(message)
        self.detail = message
        self.datasource = datasource
        self.key = key

    def __str__(self) -> str:
        parts = []
        if self.datasource is not None:
            parts.append(f"datasource {self.datasource!r}")
        if self.key is not None:
            parts.append(f"key {self.key!r}")
        return (", ".join(parts) + ": " if parts else "") + self.detail


class DatasourceUnavailable(DatasourceError):
    """The datasource cannot be reached (connect failed, timed out, server went away)."""


class DatasourceAccessError(DatasourceError):
    """A step asked for a datasource its workflow does not list."""


class MissingExtraError(ConfigError):
    """The optional dependency of a driver is not installed: a configuration to fix (``pip
    install 'blokrun[extra]'``), not a datasource that failed. ``datasource`` names the
    datasource that asked for the driver."""

    def __init__(
        self, message: str, *, datasource: str | None = None, variable: str | None = None
    ) -> None:
        super().__init__(message, variable=variable)
        self.datasource = datasource


class RecordError(DatasourceError):
    """Stored bytes that fail their checksum or cannot be decoded."""


class FormatVersionError(RecordError):
    """A record written by a newer version of blokrun."""


class KeyMissing(RecordError):
    """A record is encrypted with a key this process does not hold (``key_id``). Never
    read around: a run whose records need a missing key stops, naming the key."""

    def __init__(
        self,
        message: str,
        *,
        key_id: str,
        datasource: str | None = None,
        key: str | None = None,
    ) -> None:
        super().__init__(message, datasource=datasource, key=key)
        self.key_id = key_id


class ValueNotStorable(BlokrunError):
    """A value cannot be checkpointed; ``path`` says where it is (``vars.report.rows[3]``)."""

    def __init__(self, message: str, *, path: str, type_name: str) -> None:
        self.path = path
        self.type_name = type_name
        super().__init__(f"{path}: {message} (type {type_name})")


class RunError(BlokrunError):
    """A run failed; carries the request id and, when known, the step."""

    def __init__(self, message: str, *, request_id: str, step: str | None = None) -> None:
        self.request_id = request_id
        self.step = step
        self.detail = message
        #: whether any step of the run has a stored checkpoint (None: not known)
        self.checkpointed: bool | None = None
        where = f"run {request_id}" + (f", step {step!r}" if step else "")
        super().__init__(f"{where}: {message}")


class StepFailed(RunError):
    """The node of a step raised; the original exception is ``__cause__``."""


class CheckpointError(RunError):
    """Saving a checkpoint failed; no later step ran."""

    def __init__(
        self,
        message: str,
        *,
        request_id: str,
        step: str | None,
        datasource: str | None,
        key: str | None,
        unreachable: tuple[str, ...] = (),
    ) -> None:
        self.datasource = datasource
        self.key = key
        #: datasources that could not be reached (timed out or refused): the run's failure
        #: path does not wait for them again
        self.unreachable = unreachable
        super().__init__(message, request_id=request_id, step=step)


class LeaseLost(RunError):
    """The run's lease passed to another process (this one was presumed dead): its fencing
    token is no longer the latest, so the datasource refused its write and it stopped."""


class ResumeError(RunError):
    """A run cannot be resumed."""


class RunBusy(ResumeError):
    """Another process holds the run's lease: the run is being run or resumed elsewhere."""

    def __init__(self, message: str, *, request_id: str, owner: str, expires_at: float) -> None:
        self.owner = owner
        self.expires_at = expires_at
        super().__init__(message, request_id=request_id)


class RunNotFound(ResumeError):
    """Nothing is stored for this request id on any checkpoint datasource."""


class RunExists(ResumeError):
    """``run`` was given the request id of a run that exists and did not complete with the
    same workflow and inputs: continue it with ``resume``, or start it over with
    ``restart`` (a new incarnation whose records never mix with the old one's)."""


class DefinitionChanged(ResumeError):
    """The workflow given for a resume changed steps that already ran."""
