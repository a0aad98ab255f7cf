"""Start a new backend plugin distribution from the template in ``plugins/_template``.

    python docs/new_plugin.py NAME [--into DIR]

writes ``DIR/pywren_NAME`` (DIR defaults to ``plugins``): the layout, the entry point, a README
and the conformance tests, already wired. ``NAME`` is the backend key users will write
(``backend: NAME``). The template's ``mycloud`` / ``MyCloud`` / ``MYCLOUD`` become the new name,
and its ``pywren-core`` pin becomes the current core version.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "plugins" / "_template"
#: Files of the template directory that describe it rather than belong to the new plugin.
NOT_COPIED = {"TEMPLATE.md"}


def core_version() -> str:
    text = (ROOT / "pywren_core" / "__init__.py").read_text()
    return re.search(r'^__version__ = "([^"]+)"', text, re.MULTILINE).group(1)


def substitute(text: str, name: str) -> str:
    camel = "".join(part.capitalize() for part in name.split("_"))
    text = text.replace("pywren-mycloud", f"pywren-{name.replace('_', '-')}")  # distribution names use '-'
    text = text.replace("mycloud", name).replace("MyCloud", camel).replace("MYCLOUD", name.upper())
    return re.sub(r"pywren-core~=[\w.]+", f"pywren-core~={core_version()}", text)


def render(name: str, into: Path) -> Path:
    """Copy the template to ``into/pywren_<name>`` with the names filled in; return that folder."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(f"{name!r} is not a backend name: use lowercase letters, digits and '_'")
    target = into / f"pywren_{name}"
    if target.exists():
        raise FileExistsError(f"{target} already exists")
    for source in sorted(TEMPLATE.rglob("*")):
        relative = source.relative_to(TEMPLATE)
        caches = any(part.startswith(".") or part == "__pycache__" for part in relative.parts)
        if relative.name in NOT_COPIED or caches or source.is_dir():
            continue
        destination = target / substitute(str(relative), name)
        destination.parent.mkdir(parents=True, exist_ok=True)
        if source.suffix in {".py", ".toml", ".md"}:
            destination.write_text(substitute(source.read_text(), name))
        else:
            shutil.copyfile(source, destination)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="the backend key, e.g. 'hpc' for `backend: hpc`")
    parser.add_argument("--into", type=Path, default=ROOT / "plugins", help="folder to create pywren_NAME in")
    args = parser.parse_args(argv)
    try:
        target = render(args.name, args.into)
    except (ValueError, FileExistsError) as exc:
        print(f"new_plugin: {exc}", file=sys.stderr)
        return 1
    print(f"created {target}: implement the hooks in {target / f'pywren_{args.name}' / 'plugin.py'}, then")
    print(f"  pip install -e '{target}[test]' && pytest {target / 'tests'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
