"""The reference in docs/ agrees with the code it describes."""

import re
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


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens (code blocks skipped)."""
    anchors, fenced = set(), False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            text = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return anchors


def test_every_relative_link_of_the_readme_and_docs_reaches_a_file_and_heading():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and file.suffix == ".md" and anchor not in _anchors(file.read_text()):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken


def test_every_flag_the_configuration_page_names_is_one_the_service_has():
    """docs/configuration.md's table is written by hand; each flag it names must be in that service's --help."""
    commands = (ROOT / "docs" / "commands.md").read_text()
    services = {"orchestrator": ["orchestrator"], "trainer": ["trainer"], "reward client": ["reward-client"],
                "every service": ["orchestrator", "trainer", "reward-client"]}
    missing = []
    for line in (ROOT / "docs" / "configuration.md").read_text().splitlines():
        row = [cell.strip() for cell in line.strip("|").split("|")]
        if not line.startswith("| ") or row[0] not in services:
            continue
        for flag in set(re.findall(r"`(--[a-z][a-z0-9-]*)", row[2]) + re.findall(r"/`(--[a-z][a-z0-9-]*)`", row[2])):
            for name in services[row[0]]:
                section = commands.split(f"\n## fedgrpo {name}\n", 1)[1].split("\n## ", 1)[0]
                if not re.search(rf"{re.escape(flag)}\b", section):
                    missing.append(f"{row[0]}: {flag} is not an option of fedgrpo {name}")
    assert not missing, missing
