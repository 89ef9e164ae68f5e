"""MkDocs hooks of the skkprior site (``hooks:`` in ``mkdocs.yml``): what mkdocs cannot do by itself.

1. Plots: the measured results live next to the code that measures them (``examples/results/``,
   ``benchmarks/results/``), outside ``docs/``; their images are served under
   ``assets/<path in the repository>`` (the tables are included with ``pymdownx.snippets``).
2. Math: ``pymdownx.arithmatex`` marks ``$...$`` / ``$$...$$`` (in pages and, through
   ``docs/_hooks/rst_to_md.py``, in docstrings); this hook turns them into MathML with
   ``latex2mathml`` when it is installed, so the site needs no JavaScript and no network.
   Without ``latex2mathml`` the TeX source is shown as it is.
"""

from __future__ import annotations

import html
import logging
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File

logger = logging.getLogger("mkdocs.skkprior_docs")

RESULTS = ("examples/results", "benchmarks/results")
ASSETS = "assets"


def on_files(files: Any, config: Any) -> Any:
    root = Path(config.config_file_path).resolve().parent
    for folder in RESULTS:
        for path in sorted((root / folder).glob("*.png")):
            files.append(File.generated(config, f"{ASSETS}/{folder}/{path.name}", abs_src_path=str(path)))
    return files


try:
    from latex2mathml.converter import convert as _latex_to_mathml
except ImportError:  # pragma: no cover - optional: then the TeX source is shown
    _latex_to_mathml = None

_INLINE_MATH = re.compile(r'<span class="arithmatex">\\\((?P<tex>.*?)\\\)</span>', re.S)
_BLOCK_MATH = re.compile(r'<div class="arithmatex">\\\[(?P<tex>.*?)\\\]</div>', re.S)


def _mathml(match: re.Match, display: str, tag: str) -> str:
    if _latex_to_mathml is None:
        return match[0]
    try:
        mathml = _latex_to_mathml(html.unescape(match["tex"]).strip(), display=display)
    except Exception as exc:  # noqa: BLE001 - an unsupported macro: show the TeX
        logger.info("skkprior docs: TeX left as source (%s): %s", type(exc).__name__, match["tex"])
        return match[0]
    return f'<{tag} class="arithmatex">{mathml}</{tag}>'


def on_page_content(html_text: str, page: Any, config: Any, files: Any) -> str:
    html_text = _BLOCK_MATH.sub(lambda m: _mathml(m, "block", "div"), html_text)
    return _INLINE_MATH.sub(lambda m: _mathml(m, "inline", "span"), html_text)
