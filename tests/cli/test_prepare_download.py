"""`mtl prepare` downloading over loopback HTTP: progress, MD5 check, and offline errors."""

from __future__ import annotations

import dataclasses
import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mtlcli.cli import app
from mtlcli.data import sources
from mtlcli.io import md5_file
from tests.conftest import make_raw_dir

runner = CliRunner()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """Tiny gzipped IDX files served on 127.0.0.1 (a stand-in for the official mirror)."""
    root = make_raw_dir(tmp_path / "mirror", seed=4)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", root
    server.shutdown()
    server.server_close()


def _pretend_official(monkeypatch: pytest.MonkeyPatch, root: Path, *, tamper: bool = False) -> None:
    source = sources.SOURCES["fashion-mnist"]
    md5 = {role: md5_file(root / sources.RawSource.filename(role)) for role in sources.ROLES}
    if tamper:
        md5["train_labels"] = "0" * 32
    patched = dataclasses.replace(source, gz_md5=md5, raw_md5={}, system_dirs=(), mirrors=(source.mirrors[0],))
    monkeypatch.setitem(sources.SOURCES, "fashion-mnist", patched)


def test_download_from_mirror_checks_md5_and_prepares(served, tmp_path, monkeypatch) -> None:
    url, root = served
    _pretend_official(monkeypatch, root)
    data = tmp_path / "data"
    result = runner.invoke(app, ["prepare", "multifashion", "--mirror", url, "--data-dir", str(data)])
    assert result.exit_code == 0, result.output
    cached = data / "raw" / "fashion-mnist"
    assert sorted(p.name for p in cached.iterdir()) == sorted(sources.RawSource.filename(r) for r in sources.ROLES)
    meta = (data / "multifashion" / "meta.json").read_text()
    assert '"official_md5": true' in meta and url in meta


def test_md5_mismatch_is_refused_and_nothing_is_kept(served, tmp_path, monkeypatch) -> None:
    url, root = served
    _pretend_official(monkeypatch, root, tamper=True)
    data = tmp_path / "data"
    result = runner.invoke(app, ["prepare", "multifashion", "--mirror", url, "--data-dir", str(data)])
    assert result.exit_code == 1
    assert "MD5 mismatch" in result.output and "Traceback" not in result.output
    assert not (data / "raw" / "fashion-mnist" / "train-labels-idx1-ubyte.gz").exists()
    assert not (data / "multifashion").exists()


def test_offline_without_source_says_which_files_and_how(tmp_path, monkeypatch) -> None:
    _pretend_official(monkeypatch, make_raw_dir(tmp_path / "x", seed=0))
    closed = "http://127.0.0.1:9/"  # discard port: connection refused
    result = runner.invoke(app, ["prepare", "multifashion", "--mirror", closed, "--data-dir", str(tmp_path / "d")])
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "could not download Fashion-MNIST train-images-idx3-ubyte.gz" in text
    assert "train-labels-idx1-ubyte.gz" in text and "pass --source DIR" in text
    assert "Traceback" not in result.output
