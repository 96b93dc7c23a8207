"""builtin:concepts keeps a file cache: each (n, size, seed) is generated once, as a Broden folder under
``$XDG_CACHE_HOME/interp-audit/concepts`` (``~/.cache/interp-audit/concepts`` without XDG_CACHE_HOME; see
``interp_ops.cache_dirs``), or under the ``cache_dir`` a caller gives, and read from there ever after.

A folder is named ``n{n}-size{size}-seed{seed}-{key}``: the key hashes the generator's code (every module of this
package and ``interp_ops/palette.py``, by name and content) and the scikit-image and Pillow versions, so a changed
generator writes a new folder instead of reading a stale one. Nothing here deletes old folders: delete them to
reclaim the space.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from PIL import Image

from interp_ops import palette
from interp_ops.cache_dirs import cache_dir as user_cache_dir
from interp_ops.concepts.builtin import parse_builtin_uri, write_builtin_concepts


def _generator_sources() -> list[Path]:
    """The generator's source files, in a fixed order: this package's modules, then the palette."""
    return sorted(Path(__file__).parent.glob("*.py")) + [Path(palette.__file__)]


def generator_key(n: int, size: int, seed: int) -> str:
    """16 hex digits naming what ``write_builtin_concepts(n, size, seed)`` writes with this code and these
    libraries; the same in every checkout and process."""
    import skimage

    digest = hashlib.sha256()
    for path in _generator_sources():
        digest.update(f"{path.parent.name}/{path.name}\0".encode())
        digest.update(path.read_bytes())
    digest.update(f"{n},{size},{seed},{skimage.__version__},{Image.__version__}".encode())
    return digest.hexdigest()[:16]


def builtin_concepts_dir(uri: str, seed: int = 0, cache_dir: Path | None = None) -> Path:
    """Where ``builtin:concepts?...`` is cached (written there on first use)."""
    n, size, seed = parse_builtin_uri(uri, seed)
    name = f"n{n}-size{size}-seed{seed}-{generator_key(n, size, seed)}"
    folder = Path(cache_dir or user_cache_dir("concepts")) / name
    if not (folder / "index.csv").is_file():
        if folder.exists():  # a folder without index.csv is no complete copy: never rename over it
            shutil.rmtree(folder, ignore_errors=True)
        write_builtin_concepts(folder, n, size, seed)
    return folder
