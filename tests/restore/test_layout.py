"""The chunk map and the settings: layout arithmetic and bad input."""

from __future__ import annotations

import pytest

from jobctl.restore import (
    DEFAULT_FETCH_CONCURRENCY,
    FETCH_CONCURRENCY_ENV,
    MAX_BUFFERED_ENV,
    ChunkMap,
    RestoreConfigError,
    RestoreSettings,
)


def test_chunk_map_layout_with_a_short_last_chunk() -> None:
    layout = ChunkMap(size=10, chunk_size=4, zero={1})
    assert layout.count == 3
    assert [layout.offset(i) for i in range(3)] == [0, 4, 8]
    assert [layout.length(i) for i in range(3)] == [4, 4, 2]
    assert list(layout.data_chunks()) == [0, 2]
    assert layout.zero == frozenset({1})


def test_empty_image_has_no_chunks() -> None:
    layout = ChunkMap(size=0, chunk_size=4)
    assert layout.count == 0
    assert list(layout.data_chunks()) == []


def test_exact_multiple_has_no_short_chunk() -> None:
    layout = ChunkMap(size=12, chunk_size=4)
    assert layout.count == 3
    assert layout.length(2) == 4


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"size": 10, "chunk_size": 0}, ValueError, "chunk_size must be positive"),
        ({"size": 10, "chunk_size": -4}, ValueError, "chunk_size must be positive"),
        ({"size": -1, "chunk_size": 4}, ValueError, "size must not be negative"),
        ({"size": 10, "chunk_size": True}, TypeError, "chunk_size must be an int"),
        ({"size": 10.0, "chunk_size": 4}, TypeError, "size must be an int"),
        ({"size": 10, "chunk_size": 4, "zero": {3}}, ValueError, r"out of range 0\.\.2: \[3\]"),
        ({"size": 10, "chunk_size": 4, "zero": {-1}}, ValueError, "out of range"),
    ],
)
def test_chunk_map_rejects_bad_input(
    kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        ChunkMap(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("index", [-1, 3])
def test_chunk_index_out_of_range(index: int) -> None:
    layout = ChunkMap(size=10, chunk_size=4)
    with pytest.raises(IndexError, match=f"chunk index {index} out of range 0..2"):
        layout.length(index)
    with pytest.raises(IndexError):
        layout.offset(index)


def test_settings_default_without_environment() -> None:
    settings = RestoreSettings.resolve(environ={})
    assert settings == RestoreSettings(concurrency=16, max_buffered=32)
    assert settings.concurrency == DEFAULT_FETCH_CONCURRENCY


def test_settings_from_environment() -> None:
    env = {FETCH_CONCURRENCY_ENV: " 4 ", MAX_BUFFERED_ENV: "5"}
    assert RestoreSettings.resolve(environ=env) == RestoreSettings(concurrency=4, max_buffered=5)
    # the buffer follows the concurrency when only the concurrency is set
    only = RestoreSettings.resolve(environ={FETCH_CONCURRENCY_ENV: "3"})
    assert only == RestoreSettings(concurrency=3, max_buffered=6)


def test_call_overrides_environment() -> None:
    env = {FETCH_CONCURRENCY_ENV: "4", MAX_BUFFERED_ENV: "5"}
    settings = RestoreSettings.resolve(concurrency=2, max_buffered=3, environ=env)
    assert settings == RestoreSettings(concurrency=2, max_buffered=3)


def test_empty_environment_value_means_unset() -> None:
    assert RestoreSettings.resolve(environ={FETCH_CONCURRENCY_ENV: ""}).concurrency == 16


def test_process_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FETCH_CONCURRENCY_ENV, "7")
    monkeypatch.delenv(MAX_BUFFERED_ENV, raising=False)
    assert RestoreSettings.resolve() == RestoreSettings(concurrency=7, max_buffered=14)


@pytest.mark.parametrize("text", ["x", "1.5", "0", "-3", "0x10", "sixteen"])
@pytest.mark.parametrize("name", [FETCH_CONCURRENCY_ENV, MAX_BUFFERED_ENV])
def test_bad_environment_value_names_the_variable(name: str, text: str) -> None:
    with pytest.raises(RestoreConfigError, match=f"environment variable {name}="):
        RestoreSettings.resolve(environ={name: text})


@pytest.mark.parametrize("field", ["concurrency", "max_buffered"])
@pytest.mark.parametrize("value", [0, -1, -16])
def test_out_of_range_argument_names_it(field: str, value: int) -> None:
    with pytest.raises(RestoreConfigError, match=f"{field} must be at least 1, got {value}"):
        RestoreSettings.resolve(environ={}, **{field: value})


@pytest.mark.parametrize("value", [True, 2.0, "4"])
def test_non_int_argument_is_a_type_error(value: object) -> None:
    with pytest.raises(TypeError, match="concurrency must be an int"):
        RestoreSettings(concurrency=value)  # type: ignore[arg-type]


def test_config_error_is_a_value_error() -> None:
    assert issubclass(RestoreConfigError, ValueError)
