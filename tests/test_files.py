"""expkit.files: whole-file writes with the usual permissions, and the YAML dialect of config files."""

import os
import stat

import pytest
import yaml

from expkit.errors import ConfigError
from expkit.files import load_yaml_text, read_yaml_file, write_bytes_atomic, write_json_atomic, write_yaml_atomic


@pytest.fixture
def umask():
    """Set the process umask for one test, restoring it after."""
    saved = os.umask(0o022)
    os.umask(saved)

    def set_umask(value):
        os.umask(value)

    yield set_umask
    os.umask(saved)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    path = write_bytes_atomic(tmp_path / "sub" / "results.json", b"{}")
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert path.read_bytes() == b"{}"
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]  # no temporary left behind


def test_rewrite_replaces_whole_file(tmp_path, umask):
    umask(0o022)
    path = write_json_atomic(tmp_path / "r.json", {"a": 1})
    write_json_atomic(path, {"b": 2})
    assert path.read_text() == '{\n  "b": 2\n}\n' and stat.S_IMODE(path.stat().st_mode) == 0o644


def test_failed_write_leaves_no_temporary(tmp_path):
    with pytest.raises(TypeError):
        write_bytes_atomic(tmp_path / "x.bin", object())  # not bytes: the write fails
    assert list(tmp_path.iterdir()) == []


def test_strings_that_look_like_exponent_floats_round_trip(tmp_path):
    data = {"name": "1e5", "lr": 1e-3, "big": 1e20, "tag": "abc"}
    path = write_yaml_atomic(tmp_path / "config.yaml", data)
    assert read_yaml_file(path) == data
    assert yaml.safe_load(path.read_text()) == data  # plain PyYAML readers agree


def test_load_yaml_text():
    assert load_yaml_text("a: 1e-3\nb: [1E3, x1e3]\n") == {"a": 0.001, "b": [1000.0, "x1e3"]}
    assert load_yaml_text("") is None
    with pytest.raises(ConfigError) as info:
        load_yaml_text("a:\n  b: 1\n  c: 2\n  b: 3\n")
    assert info.value.path == "a.b" and "line 4 (first on line 2)" in info.value.message


def test_aliases_and_recursive_documents_are_walked_once():
    assert load_yaml_text("x: &a {k: 1}\ny: *a\n") == {"x": {"k": 1}, "y": {"k": 1}}
    data = load_yaml_text("&a [*a]\n")
    assert data[0] is data


def test_read_yaml_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="missing.yaml: file not found"):
        read_yaml_file(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1,\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: malformed YAML: line \d+, column \d+: "):
        read_yaml_file(tmp_path / "bad.yaml")
