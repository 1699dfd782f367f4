"""The reference in docs/ agrees with the code it describes."""

from pathlib import Path

from fedgrpo import docs_reference

ROOT = Path(__file__).resolve().parents[1]


def test_the_command_reference_is_what_the_commands_print():
    committed = (ROOT / "docs" / "commands.md").read_text()
    assert docs_reference.render() == committed, "docs/commands.md is out of date with the commands: run `make docs`"


def test_every_command_has_a_section():
    text = (ROOT / "docs" / "commands.md").read_text()
    for name in docs_reference.cli.COMMANDS:
        assert f"\n## fedgrpo {name}\n" in text


def test_subcommands_are_found_from_argparse_choices_and_from_example_lines():
    argparse_help = "usage: fedgrpo runs [-h] {create,list} ...\n\npositional arguments:\n  {create,list}\n"
    assert docs_reference.subcommands(["runs"], argparse_help) == ["create", "list"]
    option_choices = "options:\n  --device {cpu,cuda}  where\n"
    assert docs_reference.subcommands(["trainer"], option_choices) == []
    examples = "`fedgrpo reward-model`:\n\n    fedgrpo reward-model train --x\n    fedgrpo reward-model preferences\n"
    assert docs_reference.subcommands(["reward-model"], examples) == ["train", "preferences"]
