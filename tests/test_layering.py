"""The CLI/library boundary: the library never imports the command-line layer.

`sphinx_x/commands/` (argparse, exit codes, CommandError) and `sphinx_x/cli.py` (the entry point) sit on top
of the library; every other module must work without them, so a library import of `sphinx_x.commands` (at
module level, inside a function, or through importlib) is a layering error this test names.
"""

from __future__ import annotations

import ast
from pathlib import Path

import sphinx_x

PACKAGE = Path(sphinx_x.__file__).parent
CLI_LAYER = ("commands/", "cli.py")


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) for every import statement and every `import_module("...")` call with a literal name."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [(node.lineno, node.module)] + [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module":
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return sorted(found)


def commands_imports(source: str) -> list[str]:
    return [f"line {line}: {name}" for line, name in imported_modules(ast.parse(source))
            if name == "sphinx_x.commands" or name.startswith("sphinx_x.commands.")]


def test_no_library_module_imports_the_cli_layer():
    library = [p for p in sorted(PACKAGE.rglob("*.py")) if not p.relative_to(PACKAGE).as_posix().startswith(CLI_LAYER)]
    assert len(library) > 50  # the scan sees the package, not an empty directory
    offenders = {p.relative_to(PACKAGE).as_posix(): hits for p in library if (hits := commands_imports(p.read_text()))}
    assert offenders == {}, f"library modules import sphinx_x.commands: {offenders}"


def test_the_scan_finds_every_form_of_import():
    source = (
        "import sphinx_x.commands.info\n"
        "from sphinx_x.commands.cli_args import load_model\n"
        "from sphinx_x import commands\n"
        "def f():\n"
        "    from sphinx_x.commands import pretrain_experts\n"
        "    importlib.import_module('sphinx_x.commands.train')\n"
        "from sphinx_x.commandsx import y\n"  # a different module: not a hit
        "from sphinx_x.infer import loading\n"
    )
    assert commands_imports(source) == [
        "line 1: sphinx_x.commands.info",
        "line 2: sphinx_x.commands.cli_args",
        "line 2: sphinx_x.commands.cli_args.load_model",
        "line 3: sphinx_x.commands",
        "line 5: sphinx_x.commands",
        "line 5: sphinx_x.commands.pretrain_experts",
        "line 6: sphinx_x.commands.train",
    ]
