"""Locate, and optionally download, the IDX files of MNIST and Fashion-MNIST (sha256 checked).

Files are looked for in ``<data_dir>/<name>/`` and then ``<data_dir>/``; ``data_dir`` defaults to
``$HARDENED_DATA_DIR`` or the user cache (``~/.cache/hardened/data``). Downloads are opt-in
(``download=True`` / ``--download``); mirror URLs can be replaced with ``mirrors=`` or the
environment variable ``HARDENED_MIRROR_<NAME>`` (e.g. ``HARDENED_MIRROR_MNIST``), a
comma-separated list of base URLs.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from hardened._util.atomic import write_bytes
from hardened._util.digests import sha256_hex
from hardened.errors import DataError

__all__ = ["IDX_SOURCES", "IdxSource", "default_data_dir", "locate_idx_files", "download_idx_files", "find_or_download"]


@dataclass(frozen=True)
class IdxSource:
    """Where an IDX dataset comes from: file names, their sha256, mirrors, class names."""

    name: str
    files: dict[str, str]  # role -> file name
    sha256: dict[str, str]  # file name -> sha256 of the gzipped file
    mirrors: tuple[str, ...]
    classes: tuple[str, ...]


_ROLES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}

IDX_SOURCES: dict[str, IdxSource] = {
    "mnist": IdxSource(
        name="mnist",
        files=dict(_ROLES),
        sha256={
            "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        },
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        classes=tuple(str(i) for i in range(10)),
    ),
    "fashion-mnist": IdxSource(
        name="fashion-mnist",
        files=dict(_ROLES),
        sha256={
            "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        },
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        classes=(
            "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
            "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
        ),
    ),
}


def default_data_dir() -> Path:
    """``$HARDENED_DATA_DIR`` or ``~/.cache/hardened/data``."""
    env = os.environ.get("HARDENED_DATA_DIR")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "hardened" / "data"


def _candidates(file_name: str, data_dir: Path, name: str) -> list[Path]:
    raw = file_name[:-3] if file_name.endswith(".gz") else file_name
    folders = [data_dir / name, data_dir]
    return [folder / f for folder in folders for f in (file_name, raw, raw.replace("-idx", ".idx"))]


def locate_idx_files(source: IdxSource, data_dir: Path) -> dict[str, Path] | None:
    """Paths of all four files (gzipped or raw) or ``None`` when any is missing."""
    found: dict[str, Path] = {}
    for role, file_name in source.files.items():
        path = next((p for p in _candidates(file_name, data_dir, source.name) if p.is_file()), None)
        if path is None:
            return None
        found[role] = path
    return found


def _mirrors(source: IdxSource, mirrors: tuple[str, ...] | None) -> tuple[str, ...]:
    if mirrors:
        return mirrors
    env = os.environ.get("HARDENED_MIRROR_" + source.name.upper().replace("-", "_"))
    return tuple(u.strip() for u in env.split(",") if u.strip()) if env else source.mirrors


def download_idx_files(
    source: IdxSource,
    data_dir: Path,
    *,
    mirrors: tuple[str, ...] | None = None,
    timeout: float = 30.0,
) -> dict[str, Path]:
    """Download the four files into ``data_dir/<name>/``, checking each sha256; return paths."""
    target_dir = data_dir / source.name
    paths: dict[str, Path] = {}
    errors: list[str] = []
    for role, file_name in source.files.items():
        target = target_dir / file_name
        if target.is_file() and sha256_hex(target) == source.sha256[file_name]:
            paths[role] = target
            continue
        for base in _mirrors(source, mirrors):
            url = base.rstrip("/") + "/" + file_name
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    payload = response.read()
            except (urllib.error.URLError, OSError, ValueError) as error:
                errors.append(f"{url}: {error}")
                continue
            digest = sha256_hex(payload)
            if digest != source.sha256[file_name]:
                errors.append(f"{url}: sha256 {digest} != expected {source.sha256[file_name]}")
                continue
            write_bytes(target, payload)
            paths[role] = target
            break
        else:
            raise DataError(
                f"could not download {file_name} for {source.name} into {target_dir} "
                f"({'; '.join(errors[-2:])}). Copy the files "
                f"{', '.join(source.files.values())} into {target_dir} by hand, "
                "or point --data-dir / HARDENED_DATA_DIR at a folder that has them"
            )
    return paths


def find_or_download(
    source: IdxSource, data_dir: Path, *, download: bool, missing: str, mirrors: tuple[str, ...] | None = None
) -> dict[str, Path]:
    """The source's files under ``data_dir`` (``locate_idx_files``), else downloaded when
    ``download`` is set, else a ``DataError`` with the loader's own ``missing`` message (which
    names the files, the folders looked in and ``--download``)."""
    paths = locate_idx_files(source, data_dir)
    if paths is not None:
        return paths
    if not download:
        raise DataError(missing)
    return download_idx_files(source, data_dir, mirrors=mirrors)
