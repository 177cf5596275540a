"""Results files: written atomically, so a reader never sees half a file."""

import os
from pathlib import Path


def write_text(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary sibling renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    staging.write_text(text)
    os.replace(staging, path)
