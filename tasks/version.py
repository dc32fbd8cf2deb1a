"""Data versions with DVC: every validated version is kept by its hash, pushed to a remote, restorable anywhere.

- `.frugal/datasets/<hash>/` (+ `<hash>.dvc`, git-ignored): this machine's copy of each version, in the DVC cache.
- The DVC remote (the project's default, or `data.remote`): each version is pushed there before training, so
  another machine restores it (`restore`, or `dvc pull` for a pinned version).
- `<data.dir>.dvc` (data.dvc for the default config) pins one version in git. A run rewrites it only when it pins
  nothing yet or the config sets `data.record_version`, so other configs, and the tests, leave git clean.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from frugal.config import RunConfig
from frugal.errors import DataError
from frugal.paths import ProjectPaths
from ml.data import SPLITS, read_split
from tasks.plumbing import tracking
from tasks.plumbing.refs import DataRef
from tasks.plumbing.stage import stage
from tasks.plumbing.store import dvc_hash
from tasks.prepare import Staged

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)
LOCAL_REMOTE = "frugal-local"


def open_repo(root: Path, scm: bool = True) -> Any:  # -> dvc.repo.Repo
    """The project's DVC repo (initialised if missing, with a local remote if it has none).

    scm=False opens it without git: DVC then tracks folders under the git-ignored .frugal/ too.
    """
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    logging.getLogger("dvc").setLevel(logging.ERROR)  # its warnings repeat what our errors say
    from dvc.repo import Repo
    from dvc.scm import NoSCM

    if not (root / ".dvc").is_dir():
        Repo.init(str(root), no_scm=not (root / ".git").exists())
        log.info("Initialised a DVC repository in %s", root)
    repo = Repo(str(root)) if scm else Repo(str(root), scm=NoSCM(str(root)))
    if not repo.config["core"].get("remote"):
        with repo.config.edit() as conf:  # a folder beside the project: outside the repo, and not lost with .frugal/
            conf["remote"][LOCAL_REMOTE] = {"url": str(root.parent / f"{root.name}-dvc-remote")}
            conf["core"]["remote"] = LOCAL_REMOTE
        repo.close()
        repo = Repo(str(root)) if scm else Repo(str(root), scm=NoSCM(str(root)))
    return repo


def commit(staged: Path, target: Path, root: Path) -> str:
    """Swap the staged splits folder into `target` and `dvc add` it; return the DVC hash. On failure the old data comes back."""
    backup = target.with_name(f".{target.name}.previous")
    shutil.rmtree(backup, ignore_errors=True)
    if target.exists():
        target.rename(backup)
    try:
        shutil.move(str(staged), str(target))
        with open_repo(root) as repo:
            repo.add(str(target))
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        if backup.exists():
            backup.rename(target)
        raise
    shutil.rmtree(backup, ignore_errors=True)
    return dvc_hash(target.with_name(f"{target.name}.dvc"))


def version_folder(md5: str, paths: ProjectPaths) -> Path:
    return paths.datasets / md5.removesuffix(".dir")


def save(staged: Path, paths: ProjectPaths) -> str:
    """Record the staged splits as a data version in the DVC cache; they move to .frugal/datasets/<hash>."""
    paths.datasets.mkdir(parents=True, exist_ok=True)
    probe = paths.datasets / f".new-{staged.name}"
    shutil.rmtree(probe, ignore_errors=True)
    shutil.move(str(staged), str(probe))
    with open_repo(paths.root, scm=False) as repo:
        repo.add(str(probe))  # hashes it and fills the cache
    record = yaml.safe_load(Path(f"{probe}.dvc").read_text())
    Path(f"{probe}.dvc").unlink()
    md5 = record["outs"][0]["md5"]
    final = version_folder(md5, paths)
    shutil.rmtree(final, ignore_errors=True)  # same hash, same bytes: the fresh copy also repairs a changed one
    probe.rename(final)
    record["outs"][0]["path"] = final.name
    Path(f"{final}.dvc").write_text(yaml.safe_dump(record, sort_keys=False))
    return md5


def write_pointer(md5: str, folder: Path) -> Path:
    """The .dvc file that tracks `folder` as version `md5`."""
    pointer = Path(f"{folder}.dvc")
    pointer.write_text(yaml.safe_dump({"outs": [{"md5": md5, "hash": "md5", "path": folder.name}]}, sort_keys=False))
    return pointer


def remote_name(repo: Any, remote: str | None) -> str:
    name = remote or repo.config["core"].get("remote") or "(none)"
    url = repo.config["remote"].get(name, {}).get("url", "not configured")
    return f"{name!r} ({url})"


def push(md5: str, paths: ProjectPaths, remote: str | None) -> None:
    """Send the version to the DVC remote, so a worker or another machine can restore it."""
    with open_repo(paths.root, scm=False) as repo:
        try:
            repo.push(targets=[f"{version_folder(md5, paths)}.dvc"], remote=remote)
        except Exception as exc:  # DVC raises many types (no remote, no permission, a missing plugin): all mean "not pushed"
            raise DataError(
                f"Data version {md5} could not be pushed to the DVC remote {remote_name(repo, remote)}: {exc}",
                "Check the remote (`dvc remote list`; S3 needs `pip install dvc-s3` and credentials), or name another "
                "with data.remote. Nothing was trained.",
            ) from None
    log.info("Data version %s pushed to the DVC remote", md5)


def restore(md5: str, paths: ProjectPaths, remote: str | None) -> Path:
    """This machine's copy of version `md5`: from .frugal/datasets, else the DVC cache, else the remote. Verified byte for byte."""
    from dvc.exceptions import CheckoutError

    folder = version_folder(md5, paths)
    paths.datasets.mkdir(parents=True, exist_ok=True)
    with open_repo(paths.root, scm=False) as repo:
        if not folder.is_dir():
            pointer = write_pointer(md5, folder)
            try:
                repo.checkout(targets=[str(pointer)])
                log.info("Data version %s restored from the DVC cache", md5)
            except CheckoutError:
                _pull(repo, md5, pointer, remote)
        verify(folder, md5, repo)
    return folder


def _pull(repo: Any, md5: str, pointer: Path, remote: str | None) -> None:
    from dvc.exceptions import CheckoutError

    where = remote_name(repo, remote)
    try:
        repo.pull(targets=[str(pointer)], remote=remote)
    except CheckoutError:
        raise DataError(
            f"Data version {md5} is in neither the DVC cache ({repo.cache.local.path}) nor the remote {where}.",
            "Push it from the machine that made it (`dvc push`), or point data.remote at the remote that holds it.",
        ) from None
    except Exception as exc:  # see push()
        raise DataError(f"The DVC remote {where} could not be read for data version {md5}: {exc}",
                        "Check the remote (`dvc remote list`) and its credentials, then retry.") from None  # fmt: skip
    log.info("Data version %s pulled from the DVC remote %s", md5, where)


def verify(folder: Path, md5: str, repo: Any) -> None:
    """Every file of `folder` against the version's manifest in the DVC cache, hashed anew (DVC's own state may be stale)."""
    manifest = Path(repo.cache.local.oid_to_path(md5))
    raw = manifest.read_bytes() if manifest.is_file() else b""
    if hashlib.md5(raw).hexdigest() != md5.removesuffix(".dir"):
        raise DataError(f"The DVC cache's manifest of data version {md5} ({manifest}) is missing or does not match its hash.",
                        f"Delete {manifest} and restore the version again (it is fetched from the remote).")  # fmt: skip
    expected = {e["relpath"]: e["md5"] for e in json.loads(raw)}
    found = {p.relative_to(folder).as_posix(): _md5(p) for p in folder.rglob("*") if p.is_file()}
    changed = sorted(name for name in expected.keys() | found.keys() if expected.get(name) != found.get(name))
    if changed:
        raise DataError(
            f"Data version {md5}: {', '.join(changed)} in {folder} does not match the recorded hash (changed after it was recorded).",
            f"Delete {folder} to restore the version from the DVC cache or remote; never edit prepared files by hand.",
        )


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pin(md5: str, cfg: RunConfig, paths: ProjectPaths) -> bool:
    """Check the version out into data.dir when `<data.dir>.dvc` pins it (or nothing yet, or the config asks); else leave both."""
    target = paths.data(cfg.data.dir)
    pointer = target.with_name(f"{target.name}.dvc")
    pinned = dvc_hash(pointer) if pointer.is_file() else None
    if pinned not in (None, md5) and not cfg.data.record_version:
        log.warning("%s pins data version %s; this run's data is %s (kept in %s and the remote). Run with --record-data to pin it.",
                    pointer.name, pinned, md5, version_folder(md5, paths))  # fmt: skip
        return False
    staged = paths.datasets / f".pin-{md5}"
    shutil.rmtree(staged, ignore_errors=True)
    shutil.copytree(version_folder(md5, paths), staged)
    commit(staged, target, paths.root)
    return True


@stage(name="version_data")
def version_data(staged: Staged, cfg: RunConfig, paths: ProjectPaths, parent_run: str) -> DataRef:
    """Record the validated splits as a data version, push it to the DVC remote, and log it so any worker can fetch it."""
    # Runs on one project take turns here; later stages read the splits through the MLflow artifact, never this folder.
    with data_lock(paths):
        md5 = save(staged.dir(paths), paths)
        push(md5, paths, cfg.data.remote)  # before training: every run's data can be fetched elsewhere
        pinned = pin(md5, cfg, paths)
        uri = splits_uri(md5, version_folder(md5, paths), parent_run)
        tracking.log_file(parent_run, Path(f"{version_folder(md5, paths)}.dvc"), "data")
    tracking.set_tags(parent_run, {"data_hash": md5, "data_pinned": str(pinned).lower()})
    log.info("Data version %s recorded%s", md5, f" and pinned in {cfg.data.dir}.dvc" if pinned else "")
    return DataRef(md5=md5, uri=uri, rows=staged.rows)


def splits_uri(md5: str, folder: Path, parent_run: str) -> str:
    """The artifact URI of this data version's splits: logged once, by the first run that made the version.

    The same version keeps the same reference, so stages keyed by it are reused across runs.
    """
    mlc = tracking.mlflow_client()
    experiment = mlc.get_run(parent_run).info.experiment_id
    earlier = mlc.search_runs([experiment], f"tags.data_splits = '{md5}'", max_results=1, order_by=["attributes.start_time ASC"])
    if earlier:
        return f"runs:/{earlier[0].info.run_id}/data/splits"
    tracking.log_dir(parent_run, folder, "data/splits")
    tracking.set_tags(parent_run, {"data_splits": md5})
    return f"runs:/{parent_run}/data/splits"


@contextlib.contextmanager
def data_lock(paths: ProjectPaths) -> Iterator[None]:
    """The project's data versions are written and read by one process at a time (runs, workers, studies)."""
    from filelock import FileLock

    paths.work.mkdir(parents=True, exist_ok=True)
    with FileLock(str(paths.work / "data.lock")):
        yield


@contextlib.contextmanager
def restored(md5: str, paths: ProjectPaths, remote: str | None) -> Iterator[Path]:
    """This machine's copy of version `md5` (see `restore`), under the data lock while it is read."""
    with data_lock(paths):
        yield restore(md5, paths, remote)


@stage(name="restore_data")
def restore_data(cfg: RunConfig, paths: ProjectPaths, parent_run: str) -> Staged:
    """Stage the recorded version `data.version` instead of preparing the source; validation and versioning follow as usual."""
    assert cfg.data.version is not None
    staged = Staged(run_id=parent_run, rows={})
    with restored(cfg.data.version, paths, cfg.data.remote) as folder:
        shutil.rmtree(staged.dir(paths), ignore_errors=True)
        shutil.copytree(folder, staged.dir(paths))
    rows = {name: len(read_split(staged.dir(paths), name)) for name in SPLITS}
    tracking.log_metrics(parent_run, {f"rows_{k}": v for k, v in rows.items()})
    tracking.set_tags(parent_run, {"data_restored": cfg.data.version})
    return Staged(run_id=parent_run, rows=rows)


def read_version(md5: str, paths: ProjectPaths, remote: str | None) -> dict[str, pd.DataFrame]:
    """Every split of the recorded version `md5`, restored as `restore` does (for a study that reads, not trains on, data)."""
    with restored(md5, paths, remote) as folder:
        return {name: read_split(folder, name) for name in SPLITS}
