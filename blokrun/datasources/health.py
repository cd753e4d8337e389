"""What the drivers' ``describe()`` make of what they read (``blokrun doctor``): sizes, the
health of a local folder, of a Redis server from its ``INFO``. Standard library only (no
driver library), so it is unit-testable without a server.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from blokrun.datasources.protocol import StoreHealth

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "NETWORK_FILESYSTEMS",
    "REDIS_MIN",
    "folder_health",
    "human_size",
    "mount_type",
    "redis_health",
]

#: Filesystem types on which ``flock`` may be local to one client, emulated or ignored.
NETWORK_FILESYSTEMS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "lustre", "afs"}
)


def human_size(n: float) -> str:
    """``512 B``, ``3.4 MB``, ``1.2 TB`` (powers of 1024)."""
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def mount_type(path: Path, mounts: Path = Path("/proc/self/mounts")) -> str | None:
    """The type of the filesystem ``path`` is on (``ext4``, ``nfs4``, ``fuse.sshfs``), from
    the mount table; ``None`` where there is none to read (not Linux)."""
    try:
        lines = mounts.read_text().splitlines()
    except OSError:
        return None
    target = str(path.resolve())
    best, found = -1, None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) > best:
            best, found = len(point), fields[2]
    return found


def folder_health(root: Path, *, fsync: bool) -> StoreHealth:
    """A filesystem datasource's folder: there, a folder, writable; free space; its
    filesystem type (leases are not safe on a network filesystem). Reads only."""
    problems: list[str] = []
    notes: list[str] = []
    if not root.exists():
        problems.append(f"folder {str(root)!r} does not exist (deleted after start?)")
    elif not root.is_dir():
        problems.append(f"{str(root)!r} is not a folder")
    elif not os.access(root, os.W_OK | os.X_OK):
        problems.append(f"folder {str(root)!r} is not writable by this user")
    else:
        usage = shutil.disk_usage(root)
        notes.append(f"{human_size(usage.free)} free of {human_size(usage.total)}")
    kind = mount_type(root) if root.exists() else None
    if kind is not None and (kind in NETWORK_FILESYSTEMS or kind.startswith("fuse")):
        notes.append(f"on a {kind} filesystem: leases are not safe across machines")
    if not fsync:
        notes.append("fsync off (FSYNC=false): a machine crash may lose the latest writes")
    return StoreHealth(
        server=f"local folder ({kind})" if kind else "local folder",
        version="-",
        schema="folder ok" if not problems else "folder unusable",
        notes=tuple(notes),
        problems=tuple(problems),
    )


#: The oldest Redis blokrun works on (``SCAN ... TYPE``).
REDIS_MIN = (6, 0)


def redis_health(info: Mapping[str, Any], keys: int, db: object) -> StoreHealth:
    """A Redis server from its ``INFO`` (empty if the command is disabled) and ``DBSIZE``."""
    version = str(info.get("redis_version") or "unknown")
    mode = str(info.get("redis_mode") or "standalone")
    problems: list[str] = []
    notes = [f"{keys} key(s) in database {db}", f"{mode} mode"]
    try:
        parts = tuple(int(x) for x in version.split(".")[:2])
    except ValueError:
        parts = REDIS_MIN
    if parts < REDIS_MIN:
        problems.append(f"Redis {version} is too old: blokrun needs 6.0 or newer (6.2 for a queue)")
    if mode == "cluster":
        problems.append("Redis Cluster is not supported (a run's keys span hash slots)")
    policy, limit = info.get("maxmemory_policy"), info.get("maxmemory")
    if limit and policy and policy != "noeviction":
        notes.append(
            f"maxmemory-policy {policy} with maxmemory {human_size(float(limit))}: Redis may "
            "evict checkpoints and leases when full; noeviction is safe"
        )
    if not info:
        notes.append("INFO is disabled on this server: version unknown")
    return StoreHealth(
        server="Redis",
        version=version,
        schema=f"database {db} (no schema to migrate)",
        notes=tuple(notes),
        problems=tuple(problems),
    )
