"""The tree's shape: imports go one way, and the README's Layout section is the tree's."""

from tests import layout


def test_imports_go_one_way() -> None:
    assert layout.violations() == []


def test_readme_layout_is_generated_from_the_tree() -> None:
    assert layout.current_section() == layout.layout(), "run: python -m tests.layout"
