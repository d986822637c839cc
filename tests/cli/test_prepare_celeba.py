"""`mtl prepare celeba` from the command line: the summary, the how-to-get error, file:line errors, bounds."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from mtlcli.cli import app
from mtlcli.data.celeba import OFFICIAL_URL
from tests.celeba_fixture import FakeCelebA, make_celeba_source, replace_line

runner = CliRunner()


@pytest.fixture
def fake(tmp_path: Path) -> FakeCelebA:
    return make_celeba_source(tmp_path / "src", seed=5)


def prepare(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["prepare", "celeba", *args])
    return result.exit_code, " ".join(result.output.split())


def test_prepare_then_already_prepared(fake: FakeCelebA, tmp_path: Path) -> None:
    data = tmp_path / "data"
    code, text = prepare("--source", str(fake.path), "--size", "32", "--data-dir", str(data), "--workers", "1")
    assert code == 0, text
    assert f"prepared celeba in {data / 'celeba'} (train 8, val 2, test 2; 32x32)" in text and "seed" not in text
    assert (data / "celeba" / "meta.json").is_file()
    code, text = prepare("--size", "32", "--data-dir", str(data))
    assert code == 0 and "celeba is already prepared" in text and "--force rebuilds it" in text


def test_no_source_and_an_empty_data_dir_says_where_to_get_it(tmp_path: Path) -> None:
    code, text = prepare("--data-dir", str(tmp_path / "data"))
    assert code == 1
    assert text.count("Error:") == 1 and "list_attr_celeba.txt" in text and OFFICIAL_URL in text
    assert "mtl prepare celeba --source DIR" in text and "Traceback" not in text
    assert not (tmp_path / "data" / "celeba").exists()


def test_a_corrupt_attribute_file_names_file_and_line(fake: FakeCelebA, tmp_path: Path) -> None:
    replace_line(fake.attr_path, 4, "000002.jpg  1  1  2")
    code, text = prepare("--source", str(fake.path), "--size", "32", "--data-dir", str(tmp_path / "data"))
    assert code == 1 and "Traceback" not in text
    assert f"Error: {fake.attr_path}:4: 3 values for 000002.jpg, expected 40" in text


@pytest.mark.parametrize("size", ["16", "512"])
def test_sizes_out_of_bounds_are_refused(size: str, fake: FakeCelebA, tmp_path: Path) -> None:
    code, text = prepare("--source", str(fake.path), "--size", size, "--data-dir", str(tmp_path / "data"))
    assert code == 1 and f"--size {size}" in text and "32..256" in text


def test_a_mirror_is_refused(fake: FakeCelebA, tmp_path: Path) -> None:
    code, text = prepare("--source", str(fake.path), "--mirror", "http://127.0.0.1:9/", "--data-dir", str(tmp_path / "d"))
    assert code == 1 and "cannot be downloaded by a script" in text
