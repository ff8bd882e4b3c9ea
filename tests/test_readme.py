"""The README's settings table names every setting (it is written from the Settings class)."""
from pathlib import Path

from server.settings import Settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_every_setting_is_in_the_readme():
    missing = [n for n in Settings.model_fields if f"`NEXTGPT_{n.upper()}`" not in README]
    assert not missing, f"add these settings to the README's table: {missing}"


def test_the_two_front_door_commands_are_in_the_readme():
    assert "make serve" in README and "make test" in README
