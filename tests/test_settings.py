"""Settings parsing without a server: units, validation, YAML mappings."""

from __future__ import annotations

import pytest

from kvorum.settings import SETTINGS, OutputBufferLimit, SettingError, from_mapping, get_value, parse_memory


@pytest.mark.parametrize("text, value", [
    ("0", 0), ("100", 100), ("1k", 1000), ("1kb", 1024), ("100mb", 100 * 1024**2), ("1gb", 1024**3),
    ("2G", 2 * 1000**3), ("1M", 1000**2), (" 5 ", 5),
])
def test_memory_units(text, value):
    assert parse_memory(text) == value


@pytest.mark.parametrize("text", ["", "lots", "1tb", "-1", "1.5mb", "mb"])
def test_bad_memory_values(text):
    with pytest.raises(SettingError, match="argument must be a memory value"):
        parse_memory(text)


def test_defaults_are_redis_defaults():
    settings = from_mapping({})
    assert settings.port == 6379 and settings.bind == "127.0.0.1" and settings.protected_mode
    assert settings.maxclients == 10000
    assert settings.proto_max_bulk_len_bytes == 512 * 1024**2
    assert settings.proto_inline_max_size_bytes == 64 * 1024
    assert settings.client_query_buffer_limit_bytes == 1024**3
    assert settings.client_output_buffer_limit == OutputBufferLimit(0, 0, 0)
    assert settings.maxmemory_policy == "noeviction"


def test_mapping_values_are_validated_like_config_set():
    settings = from_mapping({"maxmemory": "1gb", "protected-mode": False, "client-output-buffer-limit":
                             "normal 4mb 2mb 10 replica 0 0 0 pubsub 32mb 8mb 60"})
    assert settings.maxmemory_bytes == 1024**3
    assert settings.protected_mode is False
    assert settings.client_output_buffer_limit == OutputBufferLimit(4 * 1024**2, 2 * 1024**2, 10)
    with pytest.raises(SettingError, match="maxmemory-policy"):
        from_mapping({"maxmemory-policy": "sometimes"})
    with pytest.raises(SettingError, match="unknown setting"):
        from_mapping({"databases": 4})
    with pytest.raises(SettingError, match="maxclients"):
        from_mapping({"maxclients": 0})


def test_every_setting_shows_what_it_parses():
    settings = from_mapping({})
    for name, setting in SETTINGS.items():
        shown = get_value(settings, setting)
        if setting.field:
            assert setting.parse(shown) == getattr(settings, setting.field), name
