"""What every server runner takes and gives."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Context:
    """What a server needs to serve the bench's checkpoint."""

    repo: Path  # the raysight source tree (its src/ goes on the peers' PYTHONPATH)
    checkpoint: Path
    model_name: str  # every server serves the model under this name
    work_dir: Path  # peers' virtualenvs, settings and logs live here
    threads: int  # torch threads of the bare+engine server and the peers
    device: str  # cpu or cuda

    @property
    def log_dir(self) -> Path:
        return self.work_dir / "logs"


@dataclass(frozen=True)
class Running:
    """A server ready for requests."""

    name: str
    target: str  # HOST:PORT of its gRPC listener
    log: Path
    command: str  # how it was started, for the record
    pid: int
