"""Settings as data: defaults, BEAGLE_* overrides read once into their types, immutable,
and docs/settings.md, generated from them, documents each one."""

import dataclasses
import ipaddress

import pytest

from app import config
from app.config import SETTINGS
from tools import settings_reference

K1, K2 = "k1-0123456789abcdef0123456789abcd", "k2-0123456789abcdef0123456789abcd"


def test_the_settings_reference_is_generated_from_the_definitions():
    """docs/settings.md is what `python -m tools.settings_reference` writes (run it after
    changing app/config.py), with one row per setting."""
    assert settings_reference.REFERENCE.read_text() == settings_reference.render(), (
        "docs/settings.md is stale: run python -m tools.settings_reference"
    )
    rows = [line for line in settings_reference.render().splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == [s.env_var for s in SETTINGS]


def test_environment_overrides_defaults_with_the_right_type():
    loaded = config.load(
        {
            "BEAGLE_PORT": "9000",
            "BEAGLE_BATCH_TIMEOUT": "0.005",
            "BEAGLE_MODELS": "digits:1, parts",
            "UNRELATED": "x",
            "BEAGLE_API_KEYS": f" {K1} ,{K2},",
            "BEAGLE_WORKER_CPUS": "0-2,5",
            "BEAGLE_ADMIN_NETWORKS": "10.0.0.0/8",
        }
    )
    assert loaded.port == 9000 and loaded.batch_timeout == 0.005
    assert loaded.models == (("digits", 1), ("parts", None))
    assert loaded.api_keys == (K1, K2) and loaded.worker_cpus == {0, 1, 2, 5}
    assert loaded.admin_networks == (ipaddress.ip_network("10.0.0.0/8"),)
    assert loaded.max_batch_size == 32 and config.load({}).api_keys == ()


def test_a_bad_value_names_its_variable():
    with pytest.raises(ValueError, match="BEAGLE_PORT='eighty': expected int"):
        config.load({"BEAGLE_PORT": "eighty"})
    with pytest.raises(ValueError, match="BEAGLE_ADMIN_NETWORKS='nowhere'"):
        config.load({"BEAGLE_ADMIN_NETWORKS": "nowhere"})


def test_settings_are_immutable_and_copied_with_changes():
    loaded = config.load({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        loaded.redis_url = "redis://elsewhere"
    changed = config.replace(loaded, redis_url="redis://elsewhere", api_keys=f"{K1},{K2}")
    assert changed.redis_url == "redis://elsewhere" and changed.api_keys == (K1, K2)
    assert loaded.redis_url == "redis://127.0.0.1:6379/0" and loaded.api_keys == ()


def test_overrides_win_and_unknown_names_are_refused():
    assert config.load({"BEAGLE_PORT": "1"}, port=2).port == 2
    with pytest.raises(KeyError, match="colour"):
        config.load({}, colour="red")


def test_as_environ_round_trips():
    original = config.load(
        {},
        port=1234,
        batch_timeout=0.25,
        models="a,b:2",
        api_keys=f"{K1},{K2}",
        worker_cpus="1,3",
        admin_networks="::1/128",
    )
    assert config.load(config.as_environ(original)) == original
    assert config.as_environ(original, changed_only=True) == {
        "BEAGLE_PORT": "1234",
        "BEAGLE_BATCH_TIMEOUT": "0.25",
        "BEAGLE_MODELS": "a,b:2",
        "BEAGLE_WORKER_CPUS": "1,3",
        "BEAGLE_API_KEYS": f"{K1},{K2}",
        "BEAGLE_ADMIN_NETWORKS": "::1/128",
    }


def test_setting_names_are_unique_and_explained():
    names = [s.name for s in SETTINGS]
    assert len(names) == len(set(names))
    assert all(s.help and len(s.help) < 100 for s in SETTINGS)
