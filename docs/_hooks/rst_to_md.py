"""Docstrings of skkprior are numpydoc (reStructuredText); the site renders Markdown.

A griffe extension (loaded by mkdocstrings, see ``mkdocs.yml``) that rewrites the few
reStructuredText constructs the docstrings use into their Markdown equivalents before
mkdocstrings parses them:

- cross-reference roles (``:class:`~skkprior.kron.Kron```, ``:func:`learn_prior```,
  ``:meth:`KronSum.nearest```...): an optional cross-reference to the documented object when
  it resolves inside skkprior, otherwise inline code (``torch.func.functional_call``, private
  helpers);
- ``:math:`...``` and ``.. math::`` blocks: ``$...$`` / ``$$...$$`` for ``pymdownx.arithmatex``
  (turned into MathML at build time by ``docs/_hooks/site.py``);
- literal blocks introduced by ``::``: fenced code blocks;
- citations ``.. [1] ...`` and references ``[1]_``: plain ``[1]`` list items and text.

The conversion is idempotent and only reads docstrings: the package itself is untouched.
The same :func:`rst_to_markdown` converts the module docstrings of the example scripts.
"""

from __future__ import annotations

import logging
import re
import textwrap
from typing import Any, Callable

logger = logging.getLogger("mkdocs.skkprior_docs")

PACKAGE = "skkprior"

_ROLE = re.compile(r":(?:py:)?(?P<role>class|func|meth|mod|attr|data|obj|exc|const|math|ref|term|doc)"
                   r":`(?P<body>[^`]+)`")
_CITATION = re.compile(r"^(?P<indent>\s*)\.\. \[(?P<label>[^\]]+)\]\s+(?P<text>.*)$")
_MATH_DIRECTIVE = re.compile(r"^(?P<indent>\s*)\.\. math::\s*(?P<rest>.*)$")
_FENCE = re.compile(r"^\s*(```|~~~)")

Resolver = Callable[[str], "str | None"]


def _indent_of(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _convert_role(match: re.Match, resolve: Resolver | None) -> str:
    role, body = match["role"], " ".join(match["body"].split())  # a role may span lines
    if role == "math":
        return f"${body}$"
    title, target = body, body
    explicit = re.match(r"^(?P<title>.*?)\s*<(?P<target>[^>]+)>$", body)
    if explicit:
        title, target = explicit["title"], explicit["target"]
    short = target.startswith("~")
    target = target.lstrip("~").lstrip(".")
    if not explicit:
        title = target.rsplit(".", 1)[-1] if short else target
        if role in ("func", "meth") and not title.endswith(")"):
            title += "()"
    path = resolve(target) if resolve is not None and role not in ("ref", "term", "doc") else None
    code = f"<code>{_escape_html(title)}</code>" if not explicit else _escape_html(title)
    if path is None:
        return f"`{title}`" if not explicit else title
    return f'<autoref identifier="{path}" optional>{code}</autoref>'


def _escape_html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_INLINE = re.compile(_ROLE.pattern + r"|(?P<code>``[\s\S]+?``|`[^`]+`)|(?P<cite>\[[0-9A-Za-z]+\])_(?!\w)")


def _convert_inline(line: str, resolve: Resolver | None) -> str:
    """Roles and citation references outside inline code; inline code stays literal."""
    def replace(match: re.Match) -> str:
        if match["role"]:
            return _convert_role(match, resolve)
        if match["cite"]:
            return match["cite"]
        return match[0]
    return _INLINE.sub(replace, line)


_PARAM_SECTIONS = {"parameters", "other parameters", "attributes", "keyword arguments", "receives"}
_NAME = r"\*{0,2}[A-Za-z_][A-Za-z_0-9]*"
_GROUP = re.compile(rf"^(?P<names>{_NAME}(?:\s*,\s*{_NAME})+)\s*(?::\s*(?P<type>.*))?$")


def split_grouped_entries(text: str) -> str:
    """One entry per name in numpydoc parameter-like sections.

    numpydoc allows ``a, b : float`` (and a name list continued on the next line); griffe's
    parser gives every name of such a group the annotation and default of the first one in
    the signature. Each name gets its own entry with the group's description instead; a
    ``default=x, y`` with one value per name is distributed.
    """
    lines = text.splitlines()
    out: list[str] = []
    section = None
    i = 0
    while i < len(lines):
        line = lines[i]
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if line.strip() and re.fullmatch(r"-{3,}", nxt.strip()) and _indent_of(line) == _indent_of(nxt):
            section = line.strip().lower()
            out.extend([line, nxt])
            i += 2
            continue
        if section in _PARAM_SECTIONS and line.strip() and _indent_of(line) == 0:
            header = line.rstrip()
            j = i + 1
            while header.endswith(",") and j < len(lines) and lines[j].strip() and _indent_of(lines[j]) == 0:
                header += " " + lines[j].strip()
                j += 1
            group = _GROUP.match(header)
            if group:
                names = [n.strip() for n in group["names"].split(",")]
                desc: list[str] = []
                while j < len(lines) and (not lines[j].strip() or _indent_of(lines[j]) > 0):
                    if not lines[j].strip() and (j + 1 >= len(lines) or not lines[j + 1].strip()
                                                 or _indent_of(lines[j + 1]) == 0):
                        break
                    desc.append(lines[j])
                    j += 1
                types = [group["type"]] * len(names) if group["type"] else [None] * len(names)
                if group["type"]:
                    defaults = re.match(r"^(?P<t>.*?),\s*default[= ]\s*(?P<d>.+)$", group["type"])
                    if defaults:
                        values = [v.strip() for v in defaults["d"].split(",")]
                        if len(values) == len(names):
                            types = [f"{defaults['t']}, default={v}" for v in values]
                for name, kind in zip(names, types):
                    out.append(f"{name} : {kind}" if kind else name)
                    out.extend(desc)
                i = j
                continue
        out.append(line)
        i += 1
    return "\n".join(out)


def rst_to_markdown(text: str, resolve: Resolver | None = None) -> str:
    """Rewrite the reStructuredText constructs of a docstring into Markdown (idempotent)."""
    if not text:
        return text
    lines = split_grouped_entries(text).splitlines()
    out: list[str] = []
    i = 0
    in_fence = False
    while i < len(lines):
        line = lines[i]
        if _FENCE.match(line):
            in_fence = not in_fence
            out.append(line)
            i += 1
            continue
        if in_fence or line.lstrip().startswith((">>>", "...")):
            out.append(line)
            i += 1
            continue
        math = _MATH_DIRECTIVE.match(line)
        if math:
            indent = " " * len(math["indent"])
            body = [math["rest"]] if math["rest"].strip() else []
            i += 1
            block, i = _indented_block(lines, i, len(indent))
            body += textwrap.dedent("\n".join(block)).splitlines()
            body = [b for b in body if b.strip()]
            # at column 0: pymdownx.arithmatex does not see an indented block (in a list item
            # continued by two spaces, as reStructuredText writes it)
            _ensure_blank(out)
            out.append("$$")
            out.extend(b.strip() for b in body)
            out.append("$$")
            out.append("")
            continue
        citation = _CITATION.match(line)
        if citation:
            indent = citation["indent"]
            text_lines = [citation["text"].strip()]
            i += 1
            while i < len(lines) and lines[i].strip() and _indent_of(lines[i]) > len(indent) \
                    and not _CITATION.match(lines[i]):
                text_lines.append(lines[i].strip())
                i += 1
            out.append(f"{indent}- [{citation['label']}] " + " ".join(text_lines))
            continue
        stripped = line.rstrip()
        if stripped.endswith("::") and not stripped.lstrip().startswith(".."):
            # a literal block follows (after a blank line, more indented)
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            base = _indent_of(line)
            if j < len(lines) and _indent_of(lines[j]) > base:
                head = stripped[:-2].rstrip()
                if head.strip():
                    out.append(head + ("" if stripped.endswith(" ::") else ":"))
                block, i = _indented_block(lines, j, base)
                _ensure_blank(out)
                pad = " " * base
                out.append(f"{pad}```")
                out.extend(f"{pad}{b}" if b.strip() else "" for b in textwrap.dedent("\n".join(block)).splitlines())
                out.append(f"{pad}```")
                out.append("")
                continue
        out.append(line)
        i += 1
    return _convert_prose(out, resolve).rstrip("\n")


def _convert_prose(lines: list[str], resolve: Resolver | None) -> str:
    """Apply the inline conversions to runs of prose lines (fences and doctest lines untouched)."""
    chunks: list[str] = []
    prose: list[str] = []
    in_fence = False

    def flush() -> None:
        if prose:
            chunks.append(_convert_inline("\n".join(prose), resolve))
            prose.clear()

    for line in lines:
        if _FENCE.match(line):
            flush()
            in_fence = not in_fence
            chunks.append(line)
        elif in_fence or line.lstrip().startswith((">>>", "... ")) or line.strip() == "...":
            flush()
            chunks.append(line)
        else:
            prose.append(line)
    flush()
    return "\n".join(chunks)


def _indented_block(lines: list[str], i: int, base: int) -> tuple[list[str], int]:
    """Lines from ``i`` that are blank or indented more than ``base`` (trailing blanks dropped)."""
    block: list[str] = []
    while i < len(lines) and (not lines[i].strip() or _indent_of(lines[i]) > base):
        block.append(lines[i])
        i += 1
    while block and not block[-1].strip():
        block.pop()
        i -= 1
    return block, i


def _ensure_blank(out: list[str]) -> None:
    if out and out[-1].strip():
        out.append("")


# ------------------------------------------------------------------------------------------
# griffe extension
# ------------------------------------------------------------------------------------------
try:  # griffe >= 1 (griffelib 2 keeps the name)
    from griffe import Extension
except ImportError:  # pragma: no cover - the docs extra always brings griffe
    Extension = object  # type: ignore[assignment,misc]


def _documented(obj: Any) -> bool:
    """Whether mkdocstrings renders ``obj`` on the API pages (public, with a docstring)."""
    parts = obj.path.split(".")
    if parts[0] != PACKAGE:
        return False
    if any(p.startswith("_") and not (p.startswith("__") and p.endswith("__")) for p in parts):
        return False
    return obj.is_module or bool(obj.docstring)


class RstToMarkdown(Extension):
    """Rewrite every docstring of the package once it is loaded (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self._done: set[str] = set()

    # griffe >= 2 calls on_package, griffe 1 on_package_loaded; both are idempotent here
    def on_package(self, *, pkg: Any, **kwargs: Any) -> None:
        self._convert_package(pkg)

    def on_package_loaded(self, *, pkg: Any, **kwargs: Any) -> None:
        self._convert_package(pkg)

    def _convert_package(self, pkg: Any) -> None:
        if pkg.path in self._done:
            return
        self._done.add(pkg.path)
        seen: set[int] = set()
        self._walk(pkg, pkg, seen)

    def _walk(self, obj: Any, pkg: Any, seen: set[int]) -> None:
        if id(obj) in seen or obj.is_alias:
            return
        seen.add(id(obj))
        if obj.docstring is not None:
            obj.docstring.value = rst_to_markdown(obj.docstring.value, lambda name: self._resolve(name, obj, pkg))
        for member in list(obj.members.values()):
            if not member.is_alias:
                self._walk(member, pkg, seen)

    def _resolve(self, name: str, ctx: Any, pkg: Any) -> str | None:
        candidates = []
        if name == PACKAGE or name.startswith(PACKAGE + "."):
            candidates.append(name)
        else:
            scope = ctx
            while scope is not None:
                candidates.append(f"{scope.path}.{name}")
                scope = scope.parent
        for candidate in candidates:
            obj = _lookup(pkg, candidate)
            if obj is None:
                continue
            if obj.is_alias:
                try:
                    obj = obj.final_target
                except Exception:  # noqa: BLE001 - an alias to another package (torch, sklearn)
                    return None
            if _documented(obj):
                return obj.path
            return None
        if "." in name or name[:1].isupper() or name[:1].islower():
            logger.debug("skkprior docs: %s: unresolved reference %r rendered as code", ctx.path, name)
        return None


def _lookup(pkg: Any, path: str) -> Any:
    if path == pkg.path:
        return pkg
    if not path.startswith(pkg.path + "."):
        return None
    try:
        return pkg[path[len(pkg.path) + 1:]]
    except Exception:  # noqa: BLE001 - KeyError, or an alias that cannot be followed
        return None
