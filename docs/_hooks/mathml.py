"""MkDocs hook: math rendered to MathML at build time, and API tables cleaned up.

* ``pymdownx.arithmatex`` (``generic: true``) marks ``$...$`` and ``$$...$$`` and leaves the
  TeX in ``<span class="arithmatex">\\(...\\)</span>`` and ``<div class="arithmatex">\\[...\\]</div>``;
  this hook converts it with ``latex2mathml``. Browsers render MathML natively, so the site needs
  no JavaScript and no CDN for its formulas and works offline.
* numpydoc types written with RST literals (``array of the shape of ``logits````) are shown in a
  code span by mkdocstrings, where the backticks would appear literally: they are dropped there;
  Sphinx roles before a code span (``:mod:`dsnt_core.ops```) lose the role's name.

Registered in ``mkdocs.yml`` under ``hooks``; excluded from the built site by ``exclude_docs``.
"""

from __future__ import annotations

import html
import re
from typing import Any

from latex2mathml.converter import convert

_BLOCK = re.compile(r'<div class="arithmatex">\s*\\\[(?P<tex>.*?)\\\]\s*</div>', re.DOTALL)
_INLINE = re.compile(r'<span class="arithmatex">\\\((?P<tex>.*?)\\\)</span>', re.DOTALL)
_CODE_WITH_LITERALS = re.compile(r"<code>(?P<text>[^<]*``[^<]*)</code>")
_SPHINX_ROLE = re.compile(r":(?:mod|func|class|meth|attr|obj|data|exc):(?=<code>)")


def _mathml(match: re.Match[str], display: str) -> str:
    return convert(html.unescape(match.group("tex")).strip(), display=display)


def render_math(page_html: str) -> str:
    """Replace arithmatex's TeX placeholders by MathML (display formulas as blocks).

    Parameters
    ----------
    page_html : str
        A page's HTML as Python-Markdown produced it.

    Returns
    -------
    str
        The same HTML with every formula in MathML.
    """
    page_html = _BLOCK.sub(lambda m: _mathml(m, "block"), page_html)
    return _INLINE.sub(lambda m: _mathml(m, "inline"), page_html)


def drop_rst_markup(page_html: str) -> str:
    """Drop RST double backticks inside code spans and Sphinx role names before them.

    Parameters
    ----------
    page_html : str
        A page's HTML.

    Returns
    -------
    str
        The same HTML with ``<code>as ``logits``</code>`` turned into ``<code>as logits</code>``
        and ``:mod:<code>x</code>`` into ``<code>x</code>``.
    """
    page_html = _SPHINX_ROLE.sub("", page_html)
    return _CODE_WITH_LITERALS.sub(lambda m: "<code>" + m.group("text").replace("``", "") + "</code>", page_html)


def on_page_content(page_html: str, **_: Any) -> str:
    """MkDocs event: a page's HTML, after Markdown and before the theme wraps it."""
    return drop_rst_markup(render_math(page_html))
