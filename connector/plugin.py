"""damdup's WordPress plugin (adapters/wordpress_plugin/), shipped inside the
package so that a pip install can write it out for a site
(`damdup wordpress-plugin --output DIR`)."""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

PLUGIN = "wordpress_plugin"


class PluginExists(Exception):
    """The folder already holds the plugin's files; --force replaces them."""


def plugin_files() -> dict[str, bytes]:
    """The plugin's files by their path inside the plugin's folder."""
    found: dict[str, bytes] = {}

    def walk(folder: Traversable, prefix: str) -> None:
        for entry in folder.iterdir():
            if entry.name == "__pycache__":
                continue
            if entry.is_dir():
                walk(entry, f"{prefix}{entry.name}/")
            else:
                found[prefix + entry.name] = entry.read_bytes()

    walk(files("adapters").joinpath(PLUGIN), "")
    return dict(sorted(found.items()))


def write_plugin(target: Path, force: bool = False) -> list[Path]:
    """Write the plugin's files into `target` (created when missing); a file
    already there is replaced only with `force`. Nothing is written when any
    would be refused."""
    wanted = {target / name: data for name, data in plugin_files().items()}
    present = [path for path in wanted if path.exists()]
    if present and not force:
        raise PluginExists(
            f"{present[0]} exists; give --force to replace the plugin's files in {target}"
        )
    for path, data in wanted.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return list(wanted)
