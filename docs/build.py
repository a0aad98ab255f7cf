"""Build the docs from the code, so that what they show is what runs.

    python docs/build.py           # rewrite the docs in place
    python docs/build.py --check   # exit 1, naming the stale files, if a committed doc is out of date

Two things are generated:

- ``docs/hooks.md``, the hook reference, from the signatures and docstrings of
  ``pywren_core/hookspecs.py`` (and the fields of ``backend.py``, the errors of ``errors.py``).
- In every other ``docs/*.md``, a line ``<!-- include: PATH -->`` or ``<!-- include: PATH#REGION -->``
  is followed by a fenced code block and a line ``<!-- /include -->``; the build puts the file
  (PATH relative to the repository root), or the lines between ``# --8<-- [start:REGION]`` and
  ``# --8<-- [end:REGION]`` in it, into that block. Region markers are left out of what is shown.

The sources are read as text (``ast``), so building needs nothing installed.
"""

from __future__ import annotations

import ast
import re
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
HOOKS_DOC = DOCS / "hooks.md"
INCLUDE = re.compile(
    r"^<!-- include: (?P<path>[^#\s]+)(?:#(?P<region>[\w-]+))? -->\n.*?^<!-- /include -->$", re.M | re.S
)
MARKER = re.compile(r"^\s*# --8<-- \[(start|end):([\w-]+)\]\s*$")
LANGUAGES = {".py": "python", ".toml": "toml"}


# --- includes ---------------------------------------------------------------------------------


def region(path: str, name: str | None) -> str:
    """The text of ``path`` (or of its region ``name``), without region markers, dedented."""
    lines = (ROOT / path).read_text().splitlines()
    if name is not None:
        marks = {(m[1], m[2]): i for i, line in enumerate(lines) if (m := MARKER.match(line))}
        if ("start", name) not in marks or ("end", name) not in marks:
            raise ValueError(f"{path} has no region {name!r} (# --8<-- [start:{name}] ... [end:{name}])")
        lines = lines[marks["start", name] + 1 : marks["end", name]]
    kept = [line for line in lines if not MARKER.match(line)]
    return textwrap.dedent("\n".join(kept)).strip("\n")


def expand_includes(text: str) -> str:
    def replace(match: re.Match[str]) -> str:
        path, name = match["path"], match["region"]
        language = LANGUAGES.get(Path(path).suffix, "")
        marker = f"<!-- include: {path}{'#' + name if name else ''} -->"
        return f"{marker}\n```{language}\n{region(path, name)}\n```\n<!-- /include -->"

    return INCLUDE.sub(replace, text)


# --- the hook reference -----------------------------------------------------------------------


def markdown(docstring: str) -> str:
    """Docstring markup to Markdown: ``code`` and :role:`target` become `code`."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"`\1`", docstring)
    return text.replace("``", "`")


def _module(relative: str) -> tuple[ast.Module, list[str]]:
    source = (ROOT / relative).read_text()
    return ast.parse(source), source.splitlines()


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |" for line in lines)


def _hooks() -> str:
    tree, _ = _module("pywren_core/hookspecs.py")
    hooks = [node for node in tree.body if isinstance(node, ast.FunctionDef)]
    summary = [[f"[`{hook.name}`](#{hook.name})", _required(hook), _answer(hook)] for hook in hooks]
    parts = [markdown(ast.get_docstring(tree) or ""), "## Hooks", _table(["hook", "kind", "answer"], summary)]
    for hook in hooks:
        signature = f"def {hook.name}({ast.unparse(hook.args)}) -> {ast.unparse(hook.returns)}: ..."
        parts += [
            f"### `{hook.name}`",
            f"```python\n@hookimpl\n{signature}\n```",
            f"*{_answer(hook)[0].upper()}{_answer(hook)[1:]}.* " + markdown(ast.get_docstring(hook) or ""),
        ]
    return "\n\n".join(parts)


def _required(hook: ast.FunctionDef) -> str:
    return "required" if (ast.get_docstring(hook) or "").startswith("Required.") else "optional"


def _answer(hook: ast.FunctionDef) -> str:
    """How the core combines implementations, from the ``@hookspec(...)`` options."""
    options = {kw.arg for d in hook.decorator_list if isinstance(d, ast.Call) for kw in d.keywords}
    return "first non-None result" if "firstresult" in options else "every implementation is called"


def _fields(relative: str, class_name: str) -> str:
    """A class's fields with their types, defaults and ``#:`` comments, as a table."""
    tree, lines = _module(relative)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name)
    rows = []
    for node in cls.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        comments = []
        for line in reversed(lines[: node.lineno - 1]):
            if not line.strip().startswith("#:"):
                break
            comments.insert(0, line.strip()[2:].strip())
        if node.value is None:
            shown = "(required)"
        else:
            shown = "`" + re.sub(r"attrs\.field\(factory=(\w+)\)", r"\1()", ast.unparse(node.value)) + "`"
        rows.append([f"`{node.target.id}`", f"`{ast.unparse(node.annotation)}`", shown, markdown(" ".join(comments))])
    table = _table(["field", "type", "default", "meaning"], rows)
    return "\n\n".join([f"### `{class_name}`", markdown(ast.get_docstring(cls) or ""), table])


def _errors() -> str:
    tree, _ = _module("pywren_core/errors.py")
    rows = []
    for cls in (node for node in tree.body if isinstance(node, ast.ClassDef)):
        bases = ", ".join(f"`{ast.unparse(base)}`" for base in cls.bases)
        summary = (ast.get_docstring(cls) or "").split("\n\n")[0].replace("\n", " ")
        rows.append([f"`{cls.name}`", bases, markdown(summary)])
    return "\n\n".join([markdown(ast.get_docstring(tree) or ""), _table(["error", "is a", "meaning"], rows)])


def hook_reference() -> str:
    parts = [
        "# Hook reference",
        "<!-- Generated by docs/build.py from pywren_core/hookspecs.py, backend.py and errors.py: "
        "edit the docstrings there and run `python docs/build.py`. -->",
        "How to write a backend, step by step: [Writing a backend plugin](writing-a-backend.md).",
        "Import the marker as `from pywren_core import hookimpl`. The core calls every hook with keyword "
        "arguments, so an implementation may take only the arguments it uses.",
        _hooks(),
        "## What a backend declares (`pywren_core.backend`)",
        *(_fields("pywren_core/backend.py", name) for name in ("BackendInfo", "Limits", "ConfigField")),
        "## Errors (`pywren_core.errors`)",
        _errors(),
    ]
    return "\n\n".join(parts) + "\n"


# --- building and checking --------------------------------------------------------------------


def expected() -> dict[Path, str]:
    """Every generated doc, by path, as it should read now."""
    docs = {path: expand_includes(path.read_text()) for path in sorted(DOCS.glob("*.md")) if path != HOOKS_DOC}
    docs[HOOKS_DOC] = hook_reference()
    return docs


def stale() -> list[Path]:
    return [path for path, text in expected().items() if not path.exists() or path.read_text() != text]


def main(argv: list[str]) -> int:
    if argv == ["--check"]:
        outdated = stale()
        for path in outdated:
            print(f"{path.relative_to(ROOT)} is out of date: run `python docs/build.py`", file=sys.stderr)
        return 1 if outdated else 0
    if argv:
        print(__doc__, file=sys.stderr)
        return 2
    for path, text in expected().items():
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
