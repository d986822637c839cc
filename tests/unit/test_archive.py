"""safe_extract refuses archive members that would land outside the target directory."""

from __future__ import annotations

import io
import secrets
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from mtlcli.data.archive import safe_extract
from mtlcli.errors import DataError


def make_tar(path: Path, members: list[tuple[str, str, str]]) -> Path:
    """members: (name, kind 'file'|'symlink'|'hardlink'|'fifo', content or link target)."""
    with tarfile.open(path, "w:gz") as tar:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                data = payload.encode()
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                continue
            info.type = {"symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE}[kind]
            info.linkname = payload
            tar.addfile(info)
    return path


def make_zip(path: Path, members: list[tuple[str, str]], symlink: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, content in members:
            zf.writestr(name, content)
        if symlink is not None:
            info = zipfile.ZipInfo("link")
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, symlink)
    return path


def test_good_tar_and_zip_extract(tmp_path) -> None:
    tar = make_tar(tmp_path / "ok.tar.gz", [("a/b.txt", "file", "hello"), ("a/link", "symlink", "b.txt")])
    files = safe_extract(tar, tmp_path / "t1")
    assert (tmp_path / "t1" / "a" / "b.txt").read_text() == "hello"
    assert [f.name for f in files] == ["b.txt"]
    z = make_zip(tmp_path / "ok.zip", [("x/y.txt", "zip")])
    safe_extract(z, tmp_path / "t2")
    assert (tmp_path / "t2" / "x" / "y.txt").read_text() == "zip"


@pytest.mark.parametrize(
    "members",
    [
        [("../evil", "file", "x")],
        [("a/../../evil", "file", "x")],
        [("/tmp/evil-abs", "file", "x")],
        [("link", "symlink", "/etc")],
        [("link", "symlink", "../../outside")],
        [("a/link", "symlink", "../../x")],
        [("hard", "hardlink", "../outside")],
        [("fifo", "fifo", "")],
        [("ok.txt", "file", "fine"), ("../evil", "file", "x")],  # one bad member: nothing is extracted
    ],
)
def test_malicious_tar_members_are_refused(tmp_path, members) -> None:
    archive = make_tar(tmp_path / "bad.tar.gz", members)
    target = tmp_path / "target"
    with pytest.raises(DataError, match="refusing member"):
        safe_extract(archive, target)
    assert list(target.iterdir()) == []
    assert not (tmp_path / "evil").exists()


def test_a_symlink_then_a_file_through_it_is_refused(tmp_path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    archive = make_tar(tmp_path / "bad.tar.gz", [("d", "symlink", str(outside)), ("d/evil", "file", "x")])
    with pytest.raises(DataError, match="refusing member"):
        safe_extract(archive, tmp_path / "target")
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("name", ["../evil", "/abs/evil", "a/../../evil", "C:\\evil", "..\\evil"])
def test_malicious_zip_members_are_refused(tmp_path, name) -> None:
    archive = make_zip(tmp_path / "bad.zip", [(name, "x")])
    with pytest.raises(DataError, match="refusing member"):
        safe_extract(archive, tmp_path / "target")
    assert not (tmp_path / "evil").exists()


def test_zip_symlink_is_refused(tmp_path) -> None:
    with pytest.raises(DataError, match="not a regular file"):
        safe_extract(make_zip(tmp_path / "bad.zip", [], symlink="/etc/passwd"), tmp_path / "target")


def test_corrupt_missing_and_non_archives(tmp_path) -> None:
    good = make_tar(tmp_path / "ok.tar.gz", [("a.txt", "file", secrets.token_hex(20000))])
    truncated = tmp_path / "cut.tar.gz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DataError, match=r"corrupt or truncated|not a tar or zip"):
        safe_extract(truncated, tmp_path / "t")
    with pytest.raises(DataError, match="does not exist"):
        safe_extract(tmp_path / "missing.tar", tmp_path / "t")
    (tmp_path / "plain.txt").write_text("not an archive")
    with pytest.raises(DataError, match="not a tar or zip"):
        safe_extract(tmp_path / "plain.txt", tmp_path / "t")
