"""Safe extraction of tar and zip archives (for datasets shipped as archives).

Every member is checked before anything is written: absolute paths, `..` components that climb out
of the target, links (symbolic or hard) that point outside it, and device files are refused with a
DataError naming the member. Nothing is extracted from an archive that holds one bad member.
"""

from __future__ import annotations

import os
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath, PureWindowsPath

from mtlcli.errors import DataError


def _inside(target: Path, name: str) -> bool:
    """Whether `name` (relative, as stored in the archive) resolves to a path inside `target`."""
    resolved = os.path.realpath(os.path.join(target, name))
    return os.path.commonpath([resolved, str(target)]) == str(target)


def _check_name(archive: Path, target: Path, name: str) -> None:
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or ".." in posix.parts or ".." in windows.parts:
        raise DataError(f"{archive}: refusing member {name!r}: its path leaves the target directory")
    if not _inside(target, name):
        raise DataError(f"{archive}: refusing member {name!r}: it resolves outside {target}")


def _check_tar(archive: Path, target: Path, tar: tarfile.TarFile) -> None:
    for member in tar.getmembers():
        _check_name(archive, target, member.name)
        if member.issym() or member.islnk():
            link = member.linkname
            # a symlink is relative to its own directory, a hard link to the archive root
            base = os.path.dirname(member.name) if member.issym() else ""
            if os.path.isabs(link) or not _inside(target, os.path.join(base, link)):
                raise DataError(f"{archive}: refusing member {member.name!r}: it links outside the target ({link!r})")
        elif not (member.isfile() or member.isdir()):
            raise DataError(f"{archive}: refusing member {member.name!r}: not a regular file or directory")


def _check_zip(archive: Path, target: Path, zf: zipfile.ZipFile) -> None:
    for info in zf.infolist():
        _check_name(archive, target, info.filename)
        kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the archiver stored no Unix type
        if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
            raise DataError(f"{archive}: refusing member {info.filename!r}: not a regular file or directory")


def safe_extract(archive: Path, target: Path) -> list[Path]:
    """Extract a .tar(.gz/.bz2/.xz) or .zip `archive` into `target`; return the extracted files.

    Raises DataError for a corrupt archive or any member that would land outside `target`.
    """
    archive = Path(archive)
    target.mkdir(parents=True, exist_ok=True)
    root = Path(os.path.realpath(target))
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                _check_zip(archive, root, zf)
                zf.extractall(root)
                names = [i.filename for i in zf.infolist() if not i.is_dir()]
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tar:
                _check_tar(archive, root, tar)
                tar.extractall(root, filter="data")  # the standard library's own guard, too
                names = [m.name for m in tar.getmembers() if m.isfile()]
        else:
            raise DataError(f"{archive} is not a tar or zip archive")
    except FileNotFoundError:
        raise DataError(f"archive {archive} does not exist") from None
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{archive} is a corrupt or truncated archive ({exc})") from None
    return [root / name for name in names]
