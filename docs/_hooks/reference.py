"""An MkDocs hook: one reference page per package of ``extra.reference_packages``
(mkdocs.yml), listing exactly that package's ``__all__``, read from the
source (so a name added there appears in the reference with no other edit)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

_ROOT = Path(__file__).resolve().parents[2]
_SOURCES = (_ROOT, _ROOT / "simulators")


def package_all(package: str) -> list[str]:
    """The names in ``package``'s ``__all__``, read from its ``__init__.py``."""
    relative = Path(*package.split(".")) / "__init__.py"
    (init,) = (root / relative for root in _SOURCES if (root / relative).is_file())
    for node in ast.parse(init.read_text()).body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            names = ast.literal_eval(node.value)  # type: ignore[union-attr]
            return [str(name) for name in names]
    raise LookupError(f"{init} has no __all__ = [...]")


def _page(package: str) -> str:
    members = [name for name in package_all(package) if not name.startswith("_")]
    listed = "\n".join(f"        - {name}" for name in members)
    return (
        f"# `{package}`\n\n"
        f"::: {package}\n"
        "    options:\n"
        "      show_root_heading: false\n"
        "      show_root_toc_entry: false\n"
        "      heading_level: 2\n"
        "      members:\n"
        f"{listed}\n"
    )


def _uri(package: str) -> str:
    return f"reference/{package}.md"


def on_config(config: MkDocsConfig, **_: Any) -> MkDocsConfig:
    packages = config.extra["reference_packages"]
    nav = config.nav if config.nav is not None else []
    nav.append({"Reference": [{package: _uri(package)} for package in packages]})
    config.nav = nav
    return config


def on_files(files: Files, config: MkDocsConfig, **_: Any) -> Files:
    for package in config.extra["reference_packages"]:
        files.append(File.generated(config, _uri(package), content=_page(package)))
    return files
