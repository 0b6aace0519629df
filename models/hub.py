"""Weights from the Hugging Face hub: pull them into the model cache, find them there.

The model cache (``model_cache_dir``) holds::

    hub/models--<owner>--<name>/...          the hub client's own cache layout
    verified/<owner>--<name>/<commit>.json   size and sha256 of every file pulled

:func:`pull` asks the hub which commit the revision is and downloads the files that
match the source's patterns with ``huggingface_hub.snapshot_download``. That client
honours ``HF_ENDPOINT`` (a mirror), ``HF_TOKEN`` (private or gated repos) and
``HF_HUB_OFFLINE``, and resumes a cut download from its ``.incomplete`` file with a
``Range`` request. Then every file is checked against the hub's own listing (the
sha256 of an LFS file, the git blob id of a small one): the client itself checks
sizes, not contents. A file that fails is deleted and fetched once more; only when
all pass is the manifest under ``verified/`` written.

:func:`locate` is what the server calls at start: no network, the snapshot counts
only if its manifest is there and every file has the recorded size. Offline,
:func:`pull` re-hashes the cached files against that manifest instead.
"""

from __future__ import annotations

import hashlib
import os
from fnmatch import fnmatch
from pathlib import Path

import msgspec


class HubError(Exception):
    """Weights could not be pulled, found or verified; the message says which and why."""


class HubSource(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Files of one hub repository, at a revision (a branch, tag or commit)."""

    repo: str
    revision: str = "main"
    files: tuple[str, ...]
    """Glob patterns of the files to fetch (``snapshot_download``'s ``allow_patterns``);
    each must match a file of the repository unless it is also in ``optional``."""
    optional: tuple[str, ...] = ()
    any_of: tuple[tuple[str, ...], ...] = ()
    """Alternative sets of patterns, at least one of which must match in full: weights
    that come in either of two formats, each with files of its own."""


class FileRecord(msgspec.Struct, frozen=True):
    size: int
    sha256: str


class Manifest(msgspec.Struct, kw_only=True, frozen=True):
    """What a verified pull wrote: which commit, which patterns, which files."""

    repo: str
    commit: str
    files_wanted: tuple[str, ...]
    files: dict[str, FileRecord]


class Snapshot(msgspec.Struct, kw_only=True, frozen=True):
    """A verified snapshot in the cache."""

    path: Path
    commit: str
    size: int
    """Bytes on disk, all files together."""


def pull(source: HubSource, cache_dir: Path, *, token: str | None = None) -> Snapshot:
    """Download ``source`` into ``cache_dir`` (or find it there), verify it, return it."""
    folder = _download(source, cache_dir, token)
    commit = folder.name
    listing = _remote_listing(source, commit, token)
    if listing is None:  # offline or unreachable: the cache must vouch for itself
        manifest = _read_manifest(cache_dir, source.repo, commit)
        if manifest is None or manifest.files_wanted != source.files:
            why = (
                "were never verified"
                if manifest is None
                else "were verified for other files (an earlier voxserve fetched other patterns)"
            )
            raise HubError(
                f"{source.repo}: cached files at {commit[:12]} {why} and the hub cannot be "
                "reached to verify them; pull again with network access"
            )
        expected = {path: record.sha256 for path, record in manifest.files.items()}
        bad = [path for path, digest in expected.items() if _sha256(folder / path) != digest]
        if bad:
            raise HubError(f"{source.repo}: cached files changed since they were verified: {bad}")
        return _snapshot(folder, commit, manifest)
    for attempt in (1, 2):  # a file that fails is evicted and fetched once more
        records = _verify(folder, listing)
        if not isinstance(records, list):
            break
        for path in records:
            _evict(folder / path)
        if attempt == 2:
            raise HubError(
                f"{source.repo}: {', '.join(records)} failed verification against the hub's "
                "checksums twice (removed from the cache)"
            )
        folder = _download(source, cache_dir, token)
    assert not isinstance(records, list)
    manifest = Manifest(repo=source.repo, commit=commit, files_wanted=source.files, files=records)
    _write_manifest(cache_dir, manifest)
    return _snapshot(folder, commit, manifest)


def locate(source: HubSource, cache_dir: Path) -> Snapshot | None:
    """The verified snapshot of ``source`` in the cache, or ``None``; never the network."""
    storage = _storage(cache_dir, source.repo)
    commit = source.revision
    ref = storage / "refs" / source.revision
    if ref.is_file():
        commit = ref.read_text().strip()
    manifest = _read_manifest(cache_dir, source.repo, commit)
    if manifest is None or manifest.files_wanted != source.files:
        return None
    folder = storage / "snapshots" / commit
    for path, record in manifest.files.items():
        file = folder / path
        if not file.is_file() or file.stat().st_size != record.size:
            return None
    return _snapshot(folder, commit, manifest)


# -- downloading -----------------------------------------------------------------------


def _download(source: HubSource, cache_dir: Path, token: str | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        folder = snapshot_download(
            source.repo,
            revision=source.revision,
            cache_dir=cache_dir / "hub",
            allow_patterns=list(source.files),
            token=token,
        )
    except GatedRepoError as exc:
        raise HubError(f"{source.repo} is gated: accept its terms, set HF_TOKEN") from exc
    except RevisionNotFoundError as exc:
        raise HubError(f"{source.repo} has no revision {source.revision!r}") from exc
    except RepositoryNotFoundError as exc:
        raise HubError(
            f"{source.repo} was not found on the hub, or is private and HF_TOKEN is not set "
            "or not allowed"
        ) from exc
    except LocalEntryNotFoundError as exc:
        raise HubError(
            f"{source.repo} is not in the model cache and the hub cannot be reached "
            f"({_reason(exc)})"
        ) from exc
    except (HfHubHTTPError, OSError) as exc:
        raise HubError(f"{source.repo}: download failed ({_reason(exc)})") from exc
    path = Path(str(folder))
    present = _files(path)
    wanted = [p for p in source.files if p not in source.optional]
    missing = [p for p in wanted if not any(fnmatch(f, p) for f in present)]
    if missing:
        raise HubError(f"{source.repo} at {source.revision} has no file matching {missing}")
    if source.any_of and not any(
        all(any(fnmatch(f, p) for f in present) for p in group) for group in source.any_of
    ):
        sets = " or ".join(" + ".join(group) for group in source.any_of)
        raise HubError(f"{source.repo} at {source.revision} has no weights: no {sets}")
    return path


def _reason(exc: BaseException) -> str:
    """The first line of the error and of its cause: the hub client's are long."""
    lines = [str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__]
    if exc.__cause__ is not None and str(exc.__cause__).strip():
        lines.append(str(exc.__cause__).strip().splitlines()[0])
    return "; ".join(lines)


def _remote_listing(source: HubSource, commit: str, token: str | None) -> dict[str, object] | None:
    """The hub's listing of the files pulled, path to entry; ``None`` when offline."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.hf_api import RepoFile

    if constants.is_offline_mode():
        return None
    try:
        entries = HfApi(token=token).list_repo_tree(source.repo, revision=commit, recursive=True)
        return {
            entry.path: entry
            for entry in entries
            if isinstance(entry, RepoFile) and any(fnmatch(entry.path, p) for p in source.files)
        }
    except Exception:  # the hub went away since the download: verify as if offline
        return None


def _verify(folder: Path, listing: dict[str, object]) -> dict[str, FileRecord] | list[str]:
    """Each listed file's record, or the paths whose content is not what the hub lists."""
    from huggingface_hub.hf_api import RepoFile

    records: dict[str, FileRecord] = {}
    bad: list[str] = []
    for path, entry in sorted(listing.items()):
        assert isinstance(entry, RepoFile)
        file = folder / path
        if not file.is_file():
            bad.append(path)
            continue
        sha256, blob_id = _digests(file)
        if entry.lfs is not None:
            ok = sha256 == entry.lfs.sha256 and file.stat().st_size == entry.lfs.size
        else:
            ok = blob_id == entry.blob_id
        if ok:
            records[path] = FileRecord(size=file.stat().st_size, sha256=sha256)
        else:
            bad.append(path)
    return bad or records


def _digests(file: Path) -> tuple[str, str]:
    """sha256 of the content, and git's blob id (sha1 of ``blob <size>\\0`` + content)."""
    sha256 = hashlib.sha256()
    blob = hashlib.sha1(f"blob {file.stat().st_size}\0".encode(), usedforsecurity=False)
    with file.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            sha256.update(chunk)
            blob.update(chunk)
    return sha256.hexdigest(), blob.hexdigest()


def _sha256(file: Path) -> str | None:
    return _digests(file)[0] if file.is_file() else None


def _evict(file: Path) -> None:
    """Remove a snapshot file and the blob it links to, so the next download fetches it."""
    blob = file.resolve()
    for path in (file, blob):
        path.unlink(missing_ok=True)


# -- the cache -------------------------------------------------------------------------


def _storage(cache_dir: Path, repo: str) -> Path:
    return cache_dir / "hub" / ("models--" + repo.replace("/", "--"))


def _manifest_path(cache_dir: Path, repo: str, commit: str) -> Path:
    return cache_dir / "verified" / repo.replace("/", "--") / f"{commit}.json"


def _read_manifest(cache_dir: Path, repo: str, commit: str) -> Manifest | None:
    path = _manifest_path(cache_dir, repo, commit)
    try:
        return msgspec.json.decode(path.read_bytes(), type=Manifest)
    except (OSError, msgspec.DecodeError):
        return None


def _write_manifest(cache_dir: Path, manifest: Manifest) -> None:
    path = _manifest_path(cache_dir, manifest.repo, manifest.commit)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(f".{os.getpid()}.tmp")
    staging.write_bytes(msgspec.json.format(msgspec.json.encode(manifest)))
    os.replace(staging, path)


def _snapshot(folder: Path, commit: str, manifest: Manifest) -> Snapshot:
    size = sum(record.size for record in manifest.files.values())
    return Snapshot(path=folder, commit=commit, size=size)


def _files(folder: Path) -> list[str]:
    return [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
