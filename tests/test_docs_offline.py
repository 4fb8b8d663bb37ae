"""The documentation site works offline and holds only documentation; the deployment page's code runs.

Decided for external links: nothing the browser *loads* may come from another host (scripts,
stylesheets, fonts, images, frames, CSS ``url()`` and ``@import``): the site must render and
work without a network. Plain ``<a href>`` links to other sites in prose are allowed (a reader
offline simply cannot follow them); the placeholder repository link and the theme's
advertising link are gone.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS_REQUIREMENTS = ("mkdocs", "material", "mkdocstrings", "latex2mathml")
EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:)?//", re.IGNORECASE)  # http://, https://, //host
# Attributes through which a page loads something, per tag (href of <a> is a link, not a load).
LOADING_ATTRIBUTES = {
    "script": ("src",),
    "link": ("href",),
    "img": ("src", "srcset"),
    "source": ("src", "srcset"),
    "iframe": ("src",),
    "embed": ("src",),
    "object": ("data",),
    "video": ("src", "poster"),
    "audio": ("src",),
    "track": ("src",),
    "input": ("src",),
}
CSS_URL = re.compile(r"""(?:url\(\s*['"]?|@import\s+['"])(?P<url>[^'")\s]+)""", re.IGNORECASE)
# Files a built site has besides its pages and what they reference: the theme and the search index.
SITE_MACHINERY = ("assets/", "search/", "sitemap.xml", "sitemap.xml.gz", "objects.inv")


def _missing_docs_requirement() -> str | None:
    for module in DOCS_REQUIREMENTS:
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install 'dsnt-core[docs]')"
    return None


class _Page(HTMLParser):
    """The URLs a page loads, the URLs it links to, its inline CSS and its text."""

    def __init__(self) -> None:
        super().__init__()
        self.loads: list[str] = []
        self.links: list[str] = []
        self.css: list[str] = []
        self.text: list[str] = []
        self.tags: Counter[str] = Counter()
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        self.tags[tag] += 1
        for name in LOADING_ATTRIBUTES.get(tag, ()):
            if name in values:
                urls = [part.split()[0] for part in values[name].split(",") if part.strip()]
                self.loads.extend(urls if name == "srcset" else [values[name]])
        if tag == "a" and "href" in values:
            self.links.append(values["href"])
        if "style" in values:
            self.css.append(values["style"])
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        if tag == "style":
            self._in_style = False

    def handle_data(self, data: str) -> None:
        (self.css if self._in_style else self.text).append(data)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    reason = _missing_docs_requirement()
    if reason:
        pytest.skip(reason)
    site_dir = tmp_path_factory.mktemp("docs") / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return site_dir


@pytest.fixture(scope="module")
def pages(site) -> dict[str, _Page]:
    parsed = {}
    for path in sorted(site.rglob("*.html")):
        page = _Page()
        page.feed(path.read_text(encoding="utf-8"))
        parsed[path.relative_to(site).as_posix()] = page
    assert "index.html" in parsed and "deployment/index.html" in parsed
    return parsed


def test_no_page_loads_anything_from_another_host(site, pages):
    external = [
        f"{name}: {url}"
        for name, page in pages.items()
        for url in [*page.loads, *(m["url"] for css in page.css for m in CSS_URL.finditer(css))]
        if EXTERNAL.match(url)
    ]
    assert not external, "pages load from other hosts:\n" + "\n".join(external)
    for stylesheet in site.rglob("*.css"):
        urls = [m["url"] for m in CSS_URL.finditer(stylesheet.read_text(encoding="utf-8"))]
        assert not [url for url in urls if EXTERNAL.match(url)], f"{stylesheet.name} loads from other hosts"


def test_no_placeholder_or_theme_advertising_links(pages):
    links = {url for page in pages.values() for url in page.links if EXTERNAL.match(url)}
    assert not [url for url in links if ".invalid" in url or "mkdocs-material" in url], links


def test_math_is_rendered_at_build_time(pages):
    math_page = pages["math/index.html"]
    assert math_page.tags["math"] >= 2, "the formulas of the math page must be MathML"
    text = "".join(math_page.text)
    assert "\\frac" not in text and "\\partial" not in text, "TeX left for a script to typeset"


def test_api_tables_show_no_rst_markup(pages):
    for name in ("api/index.html", "index.html", "concepts/index.html"):
        text = "".join(pages[name].text)
        assert "``" not in text, f"{name} shows RST double backticks"
        assert not re.search(r":(mod|func|class|meth):", text), f"{name} shows a Sphinx role"
    assert "__prepare_scriptable__" not in "".join(pages["api/index.html"].text)


def test_site_holds_only_documentation(site, pages):
    referenced = set()
    for name, page in pages.items():
        base = (site / name).parent
        for url in [*page.loads, *page.links]:
            if not EXTERNAL.match(url) and not url.startswith(("#", "mailto:", "data:")):
                target = (base / url.split("#")[0].split("?")[0]).resolve()
                referenced.add(target)
    stray = []
    for path in site.rglob("*"):
        relative = path.relative_to(site).as_posix()
        if path.is_dir() or path.suffix == ".html" or relative.startswith(SITE_MACHINERY):
            continue
        if path.resolve() not in referenced:
            stray.append(relative)
    assert not stray, f"files in the site that no page uses: {stray}"
    assert not list(site.rglob("*.py")), "Python sources were copied into the site"


# ------------------------------------------------------------------------------- the deployment page


def _deployment_blocks():
    text = (ROOT / "docs" / "deployment.md").read_text(encoding="utf-8")
    for index, block in enumerate(re.findall(r"```python\n(.*?)```", text, flags=re.S)):
        yield pytest.param(block, id=f"deployment-{index}")


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")
@pytest.mark.parametrize("code", list(_deployment_blocks()))
def test_deployment_page_examples_run(code, tmp_path, monkeypatch):
    imported = set(re.findall(r"^\s*(?:import|from) (\w+)", code, flags=re.M))
    needed = {"onnxscript", "onnx"} if "dynamo=True" in code else set()
    for module in sorted(imported | needed):
        pytest.importorskip(module, reason=f"{module} is not installed")
    monkeypatch.chdir(tmp_path)  # the examples write model files
    exec(compile(code, "<docs/deployment.md>", "exec"), {"__name__": "deployment_example"})
