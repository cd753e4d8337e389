"""Checkpoints that write what changed: deltas, periodic snapshots, large values by reference.

A checkpoint record is either a **snapshot** (every top-level var) or a **delta** (the
top-level vars that changed since the previous checkpoint, and the names removed). A delta
names the keys of its chain -- the snapshot and the deltas after it, in order -- so a resume
reads the latest record and then the whole chain in one batched read.

Policy (:class:`StateWriter`):

* a state smaller than ``small`` bytes is always written whole (nothing to gain);
* the first checkpoint a process writes for a run is a snapshot (it knows no previous state);
* otherwise a snapshot is written when the deltas since the last snapshot add up to more
  than twice its size, or the chain would exceed ``max_chain`` records. With state that
  grows steadily, snapshots then come at steps 1, 3, 9, 27, 81 ...: the bytes written stay
  under ~2x the bytes the steps produced, where full snapshots every step cost ~N/2 x.

Change detection compares a 128-bit BLAKE2b digest of each top-level value's serialised
bytes with the one written before; each value is serialised once and spliced into the
record with ``orjson.Fragment``.

A top-level value whose serialised form is at least ``blob_threshold`` bytes goes, when a
blob datasource is configured, to ``_blokrun.blob.<sha256>`` there -- content-addressed, so
a value that did not change is never written again, by later steps or later runs -- and the
record holds ``{"$blokrun": "ref", "v": {"ds": ..., "key": ..., "sha256": ..., "size": ...}}``.

Before a run first refers to a blob (found there, or about to be written) it writes a mark
``_blokrun.blobref.<request id>/<sha256>`` on the blob datasource. The mark comes *before*
the existence check, which is what lets garbage collection delete a blob without a race
(see :mod:`blokrun.lifecycle.gc`): a collector that deleted the blob and then finds no mark
saw it before this run looked, so this run found it missing and writes it again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from blokrun.errors import DatasourceError, ResumeError
from blokrun.persistence.codec import Kind, dumps_value, loads_value
from blokrun.persistence.keys import blob_key, blobref_key

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from blokrun.datasources import Datasource
    from blokrun.persistence.envelope import Envelope
    from blokrun.persistence.records import CheckpointRecord

__all__ = ["BlobPolicy", "Chain", "StateWriter", "rebuild_vars", "resolve_blobs"]

_REF = "ref"


@dataclass(frozen=True, slots=True)
class BlobPolicy:
    """Where large values go (``datasource``), from which size (bytes)."""

    datasource: Datasource | None = None
    threshold: int = 256 * 1024


@dataclass(slots=True)
class Chain:
    """What a process knows about the run's record chain since the last snapshot."""

    base: int = 0  # seq of the snapshot
    keys: list[str] = field(default_factory=list)  # snapshot first, then deltas
    snapshot_size: int = 0
    delta_bytes: int = 0
    digests: dict[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Encoded:
    """One checkpoint's vars, ready to be spliced into its record."""

    snapshot: bool
    vars: dict[str, orjson.Fragment] | orjson.Fragment  # a small snapshot: one fragment
    removed: list[str]
    base: int
    chain: list[str]
    size: int
    blobs: list[tuple[str, bytes]]  # (key, sealed bytes) still to write
    refs: list[str] = field(default_factory=list)  # names in vars stored by reference


class StateWriter:
    """Decides, per checkpoint, between a snapshot and a delta; one per run and process."""

    __slots__ = (
        "_blobs",
        "_chain",
        "_envelope",
        "_known_blobs",
        "_mark_ttl",
        "_marked",
        "_request_id",
        "max_chain",
        "small",
    )

    def __init__(
        self,
        envelope: Envelope,
        blobs: BlobPolicy,
        *,
        request_id: str,
        mark_ttl: float | None = None,
        small: int = 16 * 1024,
        max_chain: int = 128,
    ) -> None:
        self._envelope = envelope
        self._blobs = blobs
        self._request_id = request_id
        self._mark_ttl = mark_ttl
        # Known blobs are remembered per run, not per process: a blob that gc removed
        # meanwhile is found missing (one exists() per large value per run) and written.
        self._known_blobs: set[tuple[str, str]] = set()
        self._marked: set[str] = set()
        self._chain: Chain | None = None
        self.small = small
        self.max_chain = max_chain

    async def _part(
        self, name: str, value: Any, out_blobs: list[tuple[str, bytes]], refs: list[str]
    ) -> bytes:
        data = dumps_value(value, path=f"vars.{name}")
        policy = self._blobs
        if policy.datasource is None or len(data) < policy.threshold:
            return data
        refs.append(name)
        digest = hashlib.sha256(data).hexdigest()
        key = blob_key(digest)
        ds = policy.datasource
        if digest not in self._marked:  # the mark first, then the check (see the module)
            await ds.save(blobref_key(self._request_id, digest), b"\x01", self._mark_ttl)
            self._marked.add(digest)
        if (ds.name, digest) not in self._known_blobs:
            if await ds.exists(key):
                self._known_blobs.add((ds.name, digest))
            else:
                out_blobs.append((key, self._envelope.seal(Kind.VALUE, data, bind=key)))
        ref = {
            "$blokrun": _REF,
            "v": {"ds": ds.name, "key": key, "sha256": digest, "size": len(data)},
        }
        return orjson.dumps(ref)

    def blob_written(self, key: str) -> None:
        ds = self._blobs.datasource
        if ds is not None:
            self._known_blobs.add((ds.name, key.rsplit(".", 1)[-1]))

    async def encode(self, state: Mapping[str, Any], seq: int, key: str) -> Encoded:
        """Encode ``state`` for the checkpoint ``seq`` stored under ``key``."""
        whole = dumps_value(state)
        policy = self._blobs
        if len(whole) < self.small and (
            policy.datasource is None or len(whole) < policy.threshold
        ):  # a small state: write it whole, with one serialisation (the hot path)
            self._chain = None
            return Encoded(True, orjson.Fragment(whole), [], seq, [], len(whole), [], [])
        blobs: list[tuple[str, bytes]] = []
        items = list(state.items())  # parallel branches may add vars while we await below
        refs: list[str] = []
        parts = {name: await self._part(name, value, blobs, refs) for name, value in items}
        size = sum(len(p) + len(n) + 4 for n, p in parts.items())
        chain = self._chain
        digests = {n: hashlib.blake2b(p, digest_size=16).digest() for n, p in parts.items()}
        if chain is not None and size >= self.small and len(chain.keys) < self.max_chain:
            changed = {n: p for n, p in parts.items() if chain.digests.get(n) != digests[n]}
            removed = [n for n in chain.digests if n not in parts]
            delta_size = sum(len(p) + len(n) + 4 for n, p in changed.items())
            if chain.delta_bytes + delta_size <= 2 * chain.snapshot_size:
                encoded = Encoded(
                    snapshot=False,
                    vars={n: orjson.Fragment(p) for n, p in changed.items()},
                    removed=removed,
                    base=chain.base,
                    chain=list(chain.keys),
                    size=delta_size,
                    blobs=blobs,
                    refs=[n for n in refs if n in changed],
                )
                chain.keys.append(key)
                chain.delta_bytes += delta_size
                chain.digests = digests
                return encoded
        self._chain = Chain(base=seq, keys=[key], snapshot_size=size, digests=digests)
        return Encoded(
            snapshot=True,
            vars={n: orjson.Fragment(p) for n, p in parts.items()},
            removed=[],
            base=seq,
            chain=[],
            size=size,
            blobs=blobs,
            refs=refs,
        )

    def forget(self) -> None:
        """After a failed save: the next checkpoint must not build on what was not stored."""
        self._chain = None


def rebuild_vars(
    latest: CheckpointRecord, chain: Sequence[CheckpointRecord]
) -> tuple[dict[str, Any], set[str]]:
    """Apply ``chain`` (snapshot first, then deltas, in order) and ``latest``: the vars, and
    the names among them that are stored by reference (only those are ever resolved, so a
    user value that merely looks like a reference stays a value)."""
    state: dict[str, Any] = {}
    refs: set[str] = set()
    for rec in (*chain, latest):
        if rec.snapshot:
            state, refs = dict(rec.vars), set(rec.refs)
        else:
            for name in rec.removed:
                state.pop(name, None)
                refs.discard(name)
            state.update(rec.vars)
            refs.difference_update(rec.vars)
            refs.update(rec.refs)
    return state, refs


def _is_ref(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and value.get("$blokrun") == _REF
        and len(value) == 2
        and isinstance(value.get("v"), dict)
    )


async def resolve_blobs(
    state: dict[str, Any],
    names: set[str],
    datasources: Mapping[str, Datasource],
    envelope: Envelope,
    *,
    request_id: str,
) -> dict[str, Any]:
    """Replace blob references in the top-level vars by their values, checking each digest."""
    refs = {name: state[name]["v"] for name in names if name in state and _is_ref(state[name])}
    if not refs:
        return state
    by_ds: dict[str, list[str]] = {}
    for ref in refs.values():
        by_ds.setdefault(str(ref.get("ds")), []).append(str(ref.get("key")))
    loaded: dict[tuple[str, str], bytes] = {}
    for ds_name, keys in by_ds.items():
        ds = datasources.get(ds_name)
        if ds is None:
            raise ResumeError(
                f"large values are stored on datasource {ds_name!r}, which is not configured",
                request_id=request_id,
            )
        try:
            found = await ds.load_batch(sorted(set(keys)))
        except DatasourceError as exc:
            raise ResumeError(f"cannot read large values: {exc}", request_id=request_id) from exc
        loaded.update({(ds_name, k): v for k, v in found.items()})
    out = dict(state)
    for name, ref in refs.items():
        ds_name, key = str(ref.get("ds")), str(ref.get("key"))
        raw = loaded.get((ds_name, key))
        if raw is None:
            raise ResumeError(
                f"the value of vars.{name} is stored by reference as blob {key!r} on "
                f"{ds_name!r}, which is missing; it cannot be restored",
                request_id=request_id,
            )
        _, payload = envelope.open(raw, datasource=ds_name, key=key, bind=key)
        if hashlib.sha256(payload).hexdigest() != ref.get("sha256"):
            raise ResumeError(
                f"blob {key!r} for vars.{name} on {ds_name!r} does not match its digest",
                request_id=request_id,
            )
        out[name] = loads_value(payload)
    return out
