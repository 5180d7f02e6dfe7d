"""Settings as data: defaults, BEAGLE_* overrides, and the README documents each one."""
import pytest

from app import settings as settings_module
from app.settings import PROJECT_ROOT, SETTINGS


def documented_default(setting):
    if setting.name == "model_repository":
        return "`<checkout>/models`"
    return f"`{setting.default}`" if setting.default != "" else '`""`'


def test_readme_documents_every_setting():
    rows = {line.split("|")[1].strip(): line for line in
            (PROJECT_ROOT / "README.md").read_text().splitlines() if line.startswith("| `BEAGLE_")}
    for setting in SETTINGS:
        row = rows.get(f"`{setting.env_var}`")
        assert row, f"README has no row for {setting.env_var}"
        assert documented_default(setting) in row, f"{setting.env_var}: default not in {row}"
        assert setting.help.split()[0] in row
    assert len(rows) == len(SETTINGS)


def test_environment_overrides_defaults_with_the_right_type():
    loaded = settings_module.load({"BEAGLE_PORT": "9000", "BEAGLE_BATCH_TIMEOUT": "0.005",
                                   "BEAGLE_MODELS": "digits:1", "UNRELATED": "x"})
    assert loaded.port == 9000 and loaded.batch_timeout == 0.005 and loaded.models == "digits:1"
    assert loaded.max_batch_size == 32


def test_a_bad_value_names_its_variable():
    with pytest.raises(ValueError, match="BEAGLE_PORT='eighty': expected int"):
        settings_module.load({"BEAGLE_PORT": "eighty"})


def test_overrides_win_and_unknown_names_are_refused():
    assert settings_module.load({"BEAGLE_PORT": "1"}, port=2).port == 2
    with pytest.raises(KeyError, match="colour"):
        settings_module.load({}, colour="red")


def test_as_environ_round_trips():
    original = settings_module.load({}, port=1234, batch_timeout=0.25, models="a,b:2")
    assert settings_module.load(settings_module.as_environ(original)) == original


def test_setting_names_are_unique_and_explained():
    names = [s.name for s in SETTINGS]
    assert len(names) == len(set(names))
    assert all(s.help and len(s.help) < 100 for s in SETTINGS)
