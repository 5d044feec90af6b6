"""The README's configuration table lists exactly the settings the program accepts, and links and messages pointing into docs/ lead to a section that exists."""

import re

import pytest

from components.stack_settings import KNOWN_KEYS, PROJECT_DIR

README = PROJECT_DIR / "README.md"
CONFIGURATION_HEADING = "## Configuration"


def table_keys(readme: str) -> set[str]:
    """The setting names in the first column of the table under the Configuration heading.

    A row may name several keys (`nodeMinSize` / `nodeDesiredSize` / `nodeMaxSize`), each in
    backticks."""
    lines = readme.splitlines()
    start = lines.index(CONFIGURATION_HEADING)
    keys: set[str] = set()
    in_table = False
    for line in lines[start + 1 :]:
        if line.startswith("## "):
            break
        if not line.startswith("|"):
            if in_table:
                break
            continue
        in_table = True
        first_cell = line.strip("|").split("|")[0]
        # The header row names no key in backticks; the separator row holds only dashes.
        keys.update(re.findall(r"`([^`]+)`", first_cell))
    return keys


def table_mismatch(readme: str):
    """None when the table lists exactly KNOWN_KEYS, else which keys are missing and extra."""
    listed = table_keys(readme)
    missing = sorted(set(KNOWN_KEYS) - listed)
    extra = sorted(listed - set(KNOWN_KEYS))
    if not missing and not extra:
        return None
    return (
        "the README's configuration table and components/stack_settings.py disagree: "
        f"missing from the table: {missing or 'none'}; in the table but not a setting: {extra or 'none'}"
    )


def test_configuration_table_lists_every_setting_and_nothing_else():
    problem = table_mismatch(README.read_text())
    assert problem is None, problem


def test_a_dropped_row_and_an_unknown_key_are_named():
    readme = README.read_text()
    without_shards = "\n".join(line for line in readme.splitlines() if not line.startswith("| `shards` |"))
    with_stray = readme.replace("| `namespace` |", "| `nameSpace` |")
    assert "missing from the table: ['shards']" in table_mismatch(without_shards)
    problem = table_mismatch(with_stray)
    assert "missing from the table: ['namespace']" in problem
    assert "in the table but not a setting: ['nameSpace']" in problem


def test_rows_with_several_keys_count_each():
    keys = table_keys(README.read_text())
    assert {"nodeMinSize", "nodeDesiredSize", "nodeMaxSize", "vpcId", "privateSubnetIds"} <= keys


@pytest.mark.parametrize("document", ["README.md", *sorted(p.name for p in (PROJECT_DIR / "docs").glob("*.md"))])
def test_links_to_docs_lead_to_a_file_and_heading(document):
    path = README if document == "README.md" else PROJECT_DIR / "docs" / document
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
        if "://" in target:
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists() or (anchor and linked.is_file() and anchor not in _anchors(linked.read_text())):
            broken.append(target)
    assert not broken, f"{document} links to what does not exist: {broken}"


def _anchors(markdown: str) -> set[str]:
    # GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens.
    return {
        re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        for heading in re.findall(r"^#+ (.+)$", markdown, flags=re.MULTILINE)
    }


# Messages the program prints point at a section as "docs/<file>.md, <Heading>".
SECTION_REFERENCE = re.compile(r"docs/([\w-]+\.md), ([A-Z][^),\"']*)")


def test_sections_named_by_the_program_exist():
    sources = [p for d in ("components", "cluster_logic", "sandbox", "tools") for p in (PROJECT_DIR / d).rglob("*.py")]
    missing = []
    for source in sources:
        for document, heading in SECTION_REFERENCE.findall(source.read_text()):
            path = PROJECT_DIR / "docs" / document
            headings = re.findall(r"^#+ (.+?)\s*$", path.read_text(), flags=re.MULTILINE) if path.exists() else []
            if heading.strip() not in headings:
                missing.append(f"{source.relative_to(PROJECT_DIR)}: docs/{document}, {heading.strip()}")
    assert not missing, f"messages point at sections that do not exist: {missing}"
