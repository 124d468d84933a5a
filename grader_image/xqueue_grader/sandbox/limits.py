"""Resource limits of one sandboxed run (pure data plus the rlimit calls made in the child)."""

from __future__ import annotations

import resource
from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class Limits:
    """Per-run limits; defaults from anchors.md section 6.6.

    ``processes`` is RLIMIT_NPROC, which the kernel counts per *user id*, not per run: every task
    (process or thread) of that uid counts, including the daemon's and other concurrent runs'. The
    daemon itself has no such limit, so a fork bomb only starves forks of student code (its own
    and, until its wall-clock kill, that of concurrent runs) and never the daemon.
    """

    cpu_seconds: float = 5.0
    wall_seconds: float = 10.0
    memory_mb: int = 256
    processes: int = 64
    file_size_kb: int = 1024
    output_kb: int = 64
    open_files: int = 64
    # Total bytes a run may leave in its private directory (RLIMIT_FSIZE caps one file only).
    disk_kb: int = 16384

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Limits:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def validate(self) -> list[str]:
        """Human-readable problems; empty when the limits are usable."""
        problems = []
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int | float) or value <= 0:
                problems.append(f"limit {f.name} must be a positive number, got {value!r}")
        return problems


def rlimit_pairs(limits: Limits) -> list[tuple[int, tuple[int, int]]]:
    """The (resource, (soft, hard)) pairs a child applies; pure, so tests can inspect them."""
    cpu = max(1, int(limits.cpu_seconds + 0.999))
    memory = int(limits.memory_mb) * 1024 * 1024
    file_size = int(limits.file_size_kb) * 1024
    return [
        # Soft limit sends SIGXCPU, the hard one a second later SIGKILL (CodeJail's scheme), so
        # code that catches SIGXCPU still stops.
        (resource.RLIMIT_CPU, (cpu, cpu + 1)),
        (resource.RLIMIT_AS, (memory, memory)),
        (resource.RLIMIT_FSIZE, (file_size, file_size)),
        (resource.RLIMIT_NOFILE, (int(limits.open_files), int(limits.open_files))),
        (resource.RLIMIT_NPROC, (int(limits.processes), int(limits.processes))),
        (resource.RLIMIT_CORE, (0, 0)),
        # Pinned memory is never needed and would escape the address-space accounting.
        (resource.RLIMIT_MEMLOCK, (0, 0)),
    ]


def apply_rlimits(limits: Limits) -> None:
    """Lower this process's limits (a child after fork); hard limits can never be raised again."""
    for res, (soft, hard) in rlimit_pairs(limits):
        _, current_hard = resource.getrlimit(res)
        if current_hard != resource.RLIM_INFINITY:
            hard = min(hard, current_hard)
            soft = min(soft, hard)
        resource.setrlimit(res, (soft, hard))
