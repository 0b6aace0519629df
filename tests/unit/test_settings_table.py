"""The README's settings table is the one the settings schema renders."""

from __future__ import annotations

from pathlib import Path

import msgspec

from server.settings import Settings
from server.settings_table import BEGIN, END, render, replace_in

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_table_matches_the_settings_schema() -> None:
    text = README.read_text()
    fix = "python -m server.settings_table --write README.md"
    assert replace_in(text, render()) == text, f"README.md's settings table is stale: run {fix}"


def test_every_setting_is_described_and_in_the_table() -> None:
    schema = msgspec.json.schema(Settings)["$defs"]["Settings"]["properties"]
    table = render()
    for field in msgspec.structs.fields(Settings):
        assert schema[field.name].get("description"), f"{field.name} has no description"
        assert f"| `{field.name}` | `VOXSERVE_{field.name.upper()}` |" in table


def test_replacing_keeps_the_text_around_the_markers() -> None:
    text = f"before\n{BEGIN}\nold\n{END}\nafter\n"
    assert replace_in(text, "new") == f"before\n{BEGIN}\nnew\n{END}\nafter\n"
