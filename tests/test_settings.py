"""Settings as data: defaults, BEAGLE_* overrides read once into their types, immutable,
and the README documents each one."""

import dataclasses
import ipaddress

import pytest

from app import config
from app.config import PROJECT_ROOT, SETTINGS


def documented_default(setting):
    if setting.name == "model_repository":
        return "`<checkout>/models`"
    return f"`{setting.default}`" if setting.default != "" else '`""`'


def test_readme_documents_every_setting():
    rows = {
        line.split("|")[1].strip(): line
        for line in (PROJECT_ROOT / "README.md").read_text().splitlines()
        if line.startswith("| `BEAGLE_")
    }
    for setting in SETTINGS:
        row = rows.get(f"`{setting.env_var}`")
        assert row, f"README has no row for {setting.env_var}"
        assert documented_default(setting) in row, f"{setting.env_var}: default not in {row}"
        assert setting.help.split()[0] in row
    assert len(rows) == len(SETTINGS)


def test_environment_overrides_defaults_with_the_right_type():
    loaded = config.load(
        {
            "BEAGLE_PORT": "9000",
            "BEAGLE_BATCH_TIMEOUT": "0.005",
            "BEAGLE_MODELS": "digits:1, parts",
            "UNRELATED": "x",
            "BEAGLE_API_KEYS": " k1 ,k2,",
            "BEAGLE_WORKER_CPUS": "0-2,5",
            "BEAGLE_ADMIN_NETWORKS": "10.0.0.0/8",
        }
    )
    assert loaded.port == 9000 and loaded.batch_timeout == 0.005
    assert loaded.models == (("digits", 1), ("parts", None))
    assert loaded.api_keys == ("k1", "k2") and loaded.worker_cpus == {0, 1, 2, 5}
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
    changed = config.replace(loaded, redis_url="redis://elsewhere", api_keys="a,b")
    assert changed.redis_url == "redis://elsewhere" and changed.api_keys == ("a", "b")
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
        api_keys="x,y",
        worker_cpus="1,3",
        admin_networks="::1/128",
    )
    assert config.load(config.as_environ(original)) == original
    assert config.as_environ(original, changed_only=True) == {
        "BEAGLE_PORT": "1234",
        "BEAGLE_BATCH_TIMEOUT": "0.25",
        "BEAGLE_MODELS": "a,b:2",
        "BEAGLE_WORKER_CPUS": "1,3",
        "BEAGLE_API_KEYS": "x,y",
        "BEAGLE_ADMIN_NETWORKS": "::1/128",
    }


def test_setting_names_are_unique_and_explained():
    names = [s.name for s in SETTINGS]
    assert len(names) == len(set(names))
    assert all(s.help and len(s.help) < 100 for s in SETTINGS)
