"""MkDocs hooks of the skkprior site (registered under ``hooks:`` in ``mkdocs.yml``).

1. Measured results live next to the code that measures them (``examples/results/``,
   ``benchmarks/results/``), not in ``docs/``. Pages pull them in with markers, and a missing
   file gives a "not yet measured" note instead of a broken build:

   - ``<!-- skkprior:results examples/results/NAME -->``: every ``NAME.md`` / ``NAME_*.md``
     table (the full run; a ``*_quick.md`` table only where the full one is missing, labeled
     so) and every ``NAME*.png`` plot;
   - ``<!-- skkprior:results-dir benchmarks/results -->``: every ``*.md`` table and ``*.png``
     plot of a folder;
   - ``<!-- skkprior:docstring examples/NAME.py -->``: the script's module docstring;
   - ``<!-- skkprior:source examples/NAME.py -->``: the script itself, in a collapsed block;
   - ``<!-- skkprior:include FILE -->``: a Markdown file of the repository (the changelog);
   - ``<!-- skkprior:examples-index examples -->``, ``<!-- skkprior:scripts-index benchmarks -->``:
     a table of the scripts of a folder with their summaries.

   Headings of included files are shifted below the marker's section; relative links in them
   are kept only when they point at a plot the site carries (otherwise their text stays).
2. Pages nobody has written yet: an example script (``examples/NAME.py``) or a public module
   (``skkprior/NAME.py``) without its page gets a generated one, added to the navigation, so
   the site always has one page per example and per public module.
3. Math: ``pymdownx.arithmatex`` marks ``$...$`` / ``$$...$$`` (in pages and, through
   ``docs/_hooks/rst_to_md.py``, in docstrings); this hook turns them into MathML with
   ``latex2mathml`` when it is installed, so the site needs no JavaScript and no network. Without
   ``latex2mathml`` the TeX source is shown as it is.
"""

from __future__ import annotations

import ast
import html
import importlib.util
import logging
import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File

logger = logging.getLogger("mkdocs.skkprior_docs")

_HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("_skkprior_docs_rst", _HERE / "rst_to_md.py")
_rst = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_rst)

ASSETS = "assets"  # plots are served under assets/<path in the repository>
_IMAGE_SUFFIXES = (".png", ".svg", ".jpg", ".jpeg")
_MARKER = re.compile(r"^(?P<indent>[ \t]*)<!--\s*skkprior:(?P<kind>[\w-]+)\s+(?P<arg>\S+)\s*-->[ \t]*$", re.M)
_HEADING = re.compile(r"^(#{1,6})(\s)")
_LINK = re.compile(r"(?P<bang>!?)\[(?P<text>[^\]]*)\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
_FENCE = re.compile(r"^\s*(```|~~~)")

_state: dict[str, Any] = {"root": None, "images": set(), "generated": {}}


def _root(config: Any) -> Path:
    return Path(config.config_file_path).resolve().parent


# ------------------------------------------------------------------------------------------
# pages nobody has written yet: examples and public modules
# ------------------------------------------------------------------------------------------
_API_TEMPLATE = "::: skkprior.{name}\n"
_EXAMPLE_TEMPLATE = """# {title}

<!-- skkprior:docstring examples/{name}.py -->

## Results

<!-- skkprior:results examples/results/{name} -->

## Run it

```bash
bash scripts/fetch_data.sh
python examples/{name}.py --quick   # scaled-down run
python examples/{name}.py           # the full run
```

<!-- skkprior:source examples/{name}.py -->
"""


def example_scripts(root: Path) -> list[str]:
    """Names of the example scripts (``examples/NAME.py``, helpers ``_*.py`` excluded)."""
    return sorted(p.stem for p in (root / "examples").glob("*.py") if not p.name.startswith("_"))


def public_modules(root: Path) -> list[str]:
    """Names of the public modules of the package (``skkprior/NAME.py``, ``_*.py`` excluded)."""
    return sorted(p.stem for p in (root / "skkprior").glob("*.py") if not p.name.startswith("_"))


def _summary(path: Path) -> str:
    """First line of a script's module docstring ("" when it has none)."""
    try:
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    except (OSError, SyntaxError):
        return ""
    return _rst.rst_to_markdown(doc.strip().splitlines()[0].strip()) if doc.strip() else ""


def _nav_section(nav: list, title: str) -> list | None:
    for item in nav or []:
        if isinstance(item, dict) and title in item and isinstance(item[title], list):
            return item[title]
    return None


def _nav_paths(items: Any) -> set[str]:
    paths: set[str] = set()
    for item in items if isinstance(items, list) else [items]:
        if isinstance(item, str):
            paths.add(item)
        elif isinstance(item, dict):
            for value in item.values():
                paths |= _nav_paths(value)
    return paths


def on_config(config: Any) -> Any:
    root = _root(config)
    docs = Path(config.docs_dir)
    generated: dict[str, str] = {}
    listed = _nav_paths(config.nav)
    for section, folder, names, template in (
        ("Examples", "examples", example_scripts(root), _EXAMPLE_TEMPLATE),
        ("API reference", "api", public_modules(root), _API_TEMPLATE),
    ):
        entries = _nav_section(config.nav, section)
        for name in names:
            uri = f"{folder}/{name}.md"
            if not (docs / uri).is_file():
                title = name.replace("_", " ").capitalize()
                generated[uri] = template.format(name=name, title=title)
                logger.info("skkprior docs: generated page %s (no hand-written page yet)", uri)
            if entries is not None and uri not in listed:
                entries.append({name.replace("_", " ").capitalize() if folder == "examples"
                                else f"skkprior.{name}": uri})
    _state["generated"] = generated
    return config


# ------------------------------------------------------------------------------------------
# files: generated pages, plots of the results folders
# ------------------------------------------------------------------------------------------
def on_files(files: Any, config: Any) -> Any:
    root = _root(config)
    _state["root"] = root
    _state["images"] = set()
    for uri, content in _state.get("generated", {}).items():
        files.append(File.generated(config, uri, content=content))
    for folder in ("examples/results", "benchmarks/results"):
        base = root / folder
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            if path.suffix.lower() in _IMAGE_SUFFIXES and path.is_file():
                rel = path.relative_to(root).as_posix()
                files.append(File.generated(config, f"{ASSETS}/{rel}", abs_src_path=str(path)))
                _state["images"].add(rel)
    return files


# ------------------------------------------------------------------------------------------
# page markdown: the markers
# ------------------------------------------------------------------------------------------
def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    root = _state["root"] or _root(config)

    def level_at(pos: int) -> int:
        """Level of the last heading before character ``pos`` of the page (outside fences)."""
        level, fenced = 1, False
        for line in markdown[:pos].splitlines():
            if _FENCE.match(line):
                fenced = not fenced
            elif not fenced and (m := _HEADING.match(line)):
                level = len(m.group(1))
        return level

    def replace(match: re.Match) -> str:
        kind, arg = match["kind"], match["arg"]
        level = level_at(match.start())
        handler = _HANDLERS.get(kind)
        if handler is None:
            raise ValueError(f"{page.file.src_uri}: unknown marker skkprior:{kind}")
        text = handler(root, arg, level, page)
        indent = match["indent"]
        return "\n".join(indent + line if line else line for line in text.splitlines())

    return _MARKER.sub(replace, markdown)


def _missing(what: str, command: str | None) -> str:
    how = f" Run `{command}` to produce it." if command else ""
    return f'!!! note "Not yet measured"\n    `{what}` is not in this checkout yet.{how}\n'


def _include_results(root: Path, arg: str, level: int, page: Any) -> str:
    """Tables ``NAME.md`` / ``NAME_*.md`` and plots ``NAME*.png`` of a results prefix."""
    prefix = root / arg
    folder, stem = prefix.parent, prefix.name
    script = _script_for(root, arg)
    if not folder.is_dir():
        return _missing(f"{arg}.md", script)
    tables = sorted(p for p in folder.glob(f"{stem}*.md") if p.stem == stem or p.stem.startswith(stem + "_"))
    full = [p for p in tables if not p.stem.endswith("_quick")]
    have = {p.stem for p in full}
    quick = [p for p in tables if p.stem.endswith("_quick") and p.stem[: -len("_quick")] not in have]
    parts = []
    for path in sorted(full + quick, key=lambda p: p.stem.replace("_quick", "")):
        rel = path.relative_to(root).as_posix()
        title = path.stem[len(stem):].strip("_").replace("_quick", "").replace("_", " ")
        if len(tables) > 1 and title:
            parts.append(f"{'#' * min(level + 1, 6)} {title}\n")
        if path.stem.endswith("_quick"):
            parts.append(f'!!! warning "Scaled-down run"\n    This table is from the `--quick` run '
                         f"(`{rel}`); the full run has not been recorded yet.\n")
        parts.append(_read_markdown(root, path, level + 2, page))
        parts.append(f"<small>Source: `{rel}`</small>\n")
    for rel in sorted(r for r in _state["images"]
                      if r.startswith(folder.relative_to(root).as_posix() + "/")
                      and Path(r).name.startswith(stem)):
        target = posixpath.relpath(f"{ASSETS}/{rel}", posixpath.dirname(page.file.src_uri) or ".")
        parts.append(f"![{Path(rel).stem}]({target})\n")
    if not parts:
        return _missing(f"{arg}.md", script)
    return "\n".join(parts)


def _include_results_dir(root: Path, arg: str, level: int, page: Any) -> str:
    folder = root / arg
    tables = sorted(folder.glob("*.md")) if folder.is_dir() else []
    parts = []
    for path in tables:
        rel = path.relative_to(root).as_posix()
        parts.append(_read_markdown(root, path, level + 1, page, title_fallback=path.stem))
        parts.append(f"<small>Source: `{rel}`</small>\n")
        for img in sorted(r for r in _state["images"] if r.startswith(f"{arg}/{path.stem}")):
            target = posixpath.relpath(f"{ASSETS}/{img}", posixpath.dirname(page.file.src_uri) or ".")
            parts.append(f"![{Path(img).stem}]({target})\n")
    if not parts:
        return _missing(f"{arg}/*.md", None)
    return "\n".join(parts)


def _include_file(root: Path, arg: str, level: int, page: Any) -> str:
    path = root / arg
    if not path.is_file():
        return _missing(arg, None)
    # a file included at the top of a page keeps its own title (level 1)
    return _read_markdown(root, path, level if level > 1 else 1, page)


def _include_docstring(root: Path, arg: str, level: int, page: Any) -> str:
    path = root / arg
    if not path.is_file():
        return f'!!! note "Being written"\n    `{arg}` is not in this checkout yet.\n'
    try:
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    except SyntaxError:
        doc = None
    if not doc:
        return ""
    text = _rst.rst_to_markdown(doc, _import_resolver)
    return _shift_headings(_neutralize_links(text, path, root, page), level + 1)


def _import_resolver(name: str) -> str | None:
    """Canonical path of a public skkprior object named in an example's docstring, else None.

    The reference becomes an *optional* cross-reference: it links when the object is on an API
    page and stays inline code otherwise, so it can never break the build.
    """
    import importlib

    if not name.startswith("skkprior"):
        name = f"skkprior.{name}"
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except Exception:  # noqa: BLE001 - not a module (or not importable): try shorter
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        if cut == len(parts):
            return obj.__name__
        module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
        if not module or not qualname or not module.startswith("skkprior"):
            return None
        path = f"{module}.{qualname}"
        if any(p.startswith("_") and not p.endswith("__") for p in path.split(".")):
            return None
        return path
    return None


def _include_source(root: Path, arg: str, level: int, page: Any) -> str:
    path = root / arg
    if not path.is_file():
        return f'!!! note "Being written"\n    `{arg}` is not in this checkout yet.\n'
    code = path.read_text(encoding="utf-8").rstrip("\n")
    fence = "````" if "```" in code else "```"
    body = "\n".join("    " + line if line else "" for line in [f"{fence}python", *code.splitlines(), fence])
    return f'??? example "Source: `{arg}`"\n{body}\n'


def _results_status(root: Path, name: str) -> str:
    folder = root / "examples" / "results"
    if (folder / f"{name}.md").is_file() or any(
            not p.stem.endswith("_quick") for p in folder.glob(f"{name}_*.md")):
        return "measured"
    if (folder / f"{name}_quick.md").is_file() or list(folder.glob(f"{name}_*_quick.md")):
        return "quick run only"
    return "not yet measured"


def _page_title(folder: Path | None, name: str) -> str:
    """The first heading of ``folder/NAME.md``, else the name in words."""
    page = folder / f"{name}.md" if folder is not None else None
    if page is not None and page.is_file():
        for line in page.read_text(encoding="utf-8").splitlines():
            if line.startswith("# "):
                return line[2:].strip()
    return name.replace("_", " ").capitalize()


def _examples_index(root: Path, arg: str, level: int, page: Any) -> str:
    docs = Path(page.file.abs_src_path).parent if page.file.abs_src_path else None
    names = set(example_scripts(root))
    if docs is not None:
        names |= {p.stem for p in docs.glob("*.md") if p.stem != "index"}
    names |= {uri.split("/")[-1][:-3] for uri in _state.get("generated", {}) if uri.startswith("examples/")}
    rows = ["| example | script | what it shows | results |", "|---|---|---|---|"]
    for name in sorted(names):
        script = root / arg / f"{name}.py"
        summary = _summary(script) if script.is_file() else "being written"
        summary = summary.replace("|", "\\|")
        rows.append(f"| [{_page_title(docs, name)}]({name}.md) | `{arg}/{name}.py` | {summary} | "
                    f"{_results_status(root, name)} |")
    return "\n".join(rows) + "\n"


def _scripts_index(root: Path, arg: str, level: int, page: Any) -> str:
    scripts = sorted(p for p in (root / arg).glob("*.py") if not p.name.startswith("_"))
    if not scripts:
        return ""
    rows = ["| script | what it measures |", "|---|---|"]
    for path in scripts:
        summary = _summary(path).replace("|", "\\|")
        rows.append(f"| `python {arg}/{path.name}` | {summary} |")
    return "\n".join(rows) + "\n"


_HANDLERS = {
    "examples-index": _examples_index,
    "scripts-index": _scripts_index,
    "results": _include_results,
    "results-dir": _include_results_dir,
    "include": _include_file,
    "docstring": _include_docstring,
    "source": _include_source,
}


def _script_for(root: Path, results_prefix: str) -> str | None:
    """``examples/results/NAME`` -> ``python examples/NAME.py`` when the script exists."""
    parts = results_prefix.split("/")
    if len(parts) >= 3 and parts[-2] == "results":
        script = "/".join(parts[:-2] + [parts[-1] + ".py"])
        return f"python {script}"
    return None


def _read_markdown(root: Path, path: Path, level: int, page: Any, title_fallback: str | None = None) -> str:
    text = path.read_text(encoding="utf-8")
    text = _neutralize_links(text, path, root, page)
    if title_fallback and not any(_HEADING.match(line) for line in text.splitlines()):
        text = f"# {title_fallback.replace('_', ' ')}\n\n{text}"
    return _shift_headings(text, level) + "\n"


def _shift_headings(text: str, level: int) -> str:
    """Shift the headings of ``text`` so that its highest one gets ``level`` (fences untouched)."""
    lines, fenced, levels = text.splitlines(), False, []
    for line in lines:
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced and (m := _HEADING.match(line)):
            levels.append(len(m.group(1)))
    if not levels:
        return text
    shift = level - min(levels)
    out, fenced = [], False
    for line in lines:
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced and (m := _HEADING.match(line)):
            new = max(1, min(6, len(m.group(1)) + shift))
            line = "#" * new + line[len(m.group(1)):]
        out.append(line)
    return "\n".join(out)


def _neutralize_links(text: str, source: Path, root: Path, page: Any) -> str:
    """Keep links to the web and to plots the site carries; other relative links become text."""
    def fix(match: re.Match) -> str:
        target = match["target"]
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            return match[0]
        resolved = (source.parent / target.split("#")[0]).resolve()
        try:
            rel = resolved.relative_to(root).as_posix()
        except ValueError:
            rel = None
        if match["bang"] and rel in _state["images"]:
            url = posixpath.relpath(f"{ASSETS}/{rel}", posixpath.dirname(page.file.src_uri) or ".")
            return f"![{match['text']}]({url})"
        return match["text"] if not match["bang"] else f"*{match['text'] or 'figure'} (not carried by the site)*"
    return _LINK.sub(fix, text)


# ------------------------------------------------------------------------------------------
# page content: math to MathML
# ------------------------------------------------------------------------------------------
try:
    from latex2mathml.converter import convert as _latex_to_mathml
except ImportError:  # pragma: no cover - optional: then the TeX source is shown
    _latex_to_mathml = None

_INLINE_MATH = re.compile(r'<span class="arithmatex">\\\((?P<tex>.*?)\\\)</span>', re.S)
_BLOCK_MATH = re.compile(r'<div class="arithmatex">\\\[(?P<tex>.*?)\\\]</div>', re.S)
_warned: set[str] = set()


def _mathml(tex: str, display: str) -> str | None:
    if _latex_to_mathml is None:
        return None
    try:
        return _latex_to_mathml(html.unescape(tex).strip(), display=display)
    except Exception as exc:  # noqa: BLE001 - an unsupported macro: show the TeX
        if tex not in _warned:
            _warned.add(tex)
            logger.info("skkprior docs: TeX left as source (%s): %s", type(exc).__name__, tex)
        return None


def on_page_content(html_text: str, page: Any, config: Any, files: Any) -> str:
    def inline(match: re.Match) -> str:
        mathml = _mathml(match["tex"], "inline")
        return f'<span class="arithmatex">{mathml}</span>' if mathml else match[0]

    def block(match: re.Match) -> str:
        mathml = _mathml(match["tex"], "block")
        return f'<div class="arithmatex">{mathml}</div>' if mathml else match[0]

    html_text = _BLOCK_MATH.sub(block, html_text)
    return _INLINE_MATH.sub(inline, html_text)
