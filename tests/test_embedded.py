"""The embedded models (ml/embedded.py): a split zip joined and unpacked whole or not at all; unknown names and missing
parts end in one message. The real all-mpnet-base-v2 (~400 MB) is installed by configs/experiments/mpnet.yaml, not here."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from frugal.errors import ModelError
from ml import embedded


def split_zip(tmp_path: Path, name: str, parts: int) -> list[Path]:
    """A model folder zipped under `name/` (as the PyPI parts hold it) and cut into `parts` files."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(f"{name}/config.json", '{"model_type": "bert"}')
        archive.writestr(f"{name}/model.safetensors", bytes(range(256)) * 64)
        archive.writestr(f"{name}/desktop.ini", "[.ShellClassInfo]")
    data, size = buffer.getvalue(), -(-len(buffer.getvalue()) // parts)
    files = []
    for i in range(parts):
        files.append(tmp_path / f"{name}.zip.00{i + 1}")
        files[-1].write_bytes(data[i * size : (i + 1) * size])
    return files


def test_a_split_zip_is_joined_and_unpacked_into_the_model_folder(tmp_path: Path) -> None:
    parts = split_zip(tmp_path, "m", 3)
    embedded.unpack(parts, "m", tmp_path / "cache" / "m", embedded.MPNET_REQUIREMENTS)
    folder = tmp_path / "cache" / "m"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]  # the Windows leftover dropped
    assert (folder / "model.safetensors").read_bytes() == bytes(range(256)) * 64
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["m"]  # no joined zip or half folder left beside it


def test_a_missing_part_names_it_and_leaves_no_folder(tmp_path: Path) -> None:
    parts = split_zip(tmp_path, "m", 3)
    parts[1].unlink()
    with pytest.raises(ModelError, match=r"missing: .*m\.zip\.002") as err:
        embedded.unpack(parts, "m", tmp_path / "cache" / "m", embedded.MPNET_REQUIREMENTS)
    assert "--require-hashes" in err.value.fix and not (tmp_path / "cache" / "m").exists()


def test_an_unknown_embedded_model_lists_the_known_ones() -> None:
    with pytest.raises(ModelError, match="no embedded model named 'bert-huge'") as err:
        embedded.path("bert-huge")
    assert "all-MiniLM-L6-v2, all-mpnet-base-v2" in err.value.fix


def test_the_default_is_the_minilm_package() -> None:
    assert (embedded.path(None) / "config.json").is_file() and embedded.path(None) == embedded.path("all-MiniLM-L6-v2")
