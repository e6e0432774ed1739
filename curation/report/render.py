"""The HTML page of a report, rendered from Jinja2 templates, and the two files a report writes.

`render_html(data, thumbnailer)` fills `templates/page.html` with the sections of `SECTIONS` in
page order (each from `templates/<section>.html` with the context `curation.report.sections`
builds), plus `IMAGENET_SECTION` after the classes when any image has an ImageNet label.
Autoescaping is on for every template: each value written into the page is escaped
(text and attributes; `None` renders as nothing), so file names, labels, messages and error codes
can never become markup. Line breaks and the indentation after them are removed from `.html`
templates when they are loaded, so the templates stay readable and the page stays compact.

`write_report` renders the page and writes `<out_dir>/report.html` and `<out_dir>/summary.json`
through `curation.storage` (a local folder or an `s3://` prefix) and returns the summary.
Thumbnail budgets: rejected samples 30%, duplicate strips 30%, class examples the rest; with a
semantic frame 25%, 25% and 20% for the semantic strips.
"""

from __future__ import annotations

import html
import re
from typing import Any

import jinja2
from jinja2.ext import Extension
from markupsafe import Markup

from curation import storage
from curation.report import sections
from curation.report.data import ReportData
from curation.report.spec import IMAGENET_SECTION, SECTIONS
from curation.report.thumbnails import Thumbnailer

# section id -> its template; the order of `SECTIONS` is the page order
_SECTION_TEMPLATES = {
    "counts": "counts.html",
    "rejects": "rejects.html",
    "reject-samples": "reject_samples.html",
    "duplicates": "duplicates.html",
    "semantic-duplicates": "semantic.html",
    "classes": "classes.html",
    "embedding-map": "embedding_map.html",
    "timings": "timings.html",
    "decode-errors": "decode_errors.html",
    IMAGENET_SECTION["id"]: "imagenet.html",
}


class _Compact(Extension):
    """Drops each line break of an .html template with the indentation after it."""

    def preprocess(self, source: str, name: str | None, filename: str | None = None) -> str:
        return re.sub(r"\n[ \t]*", "", source) if (name or "").endswith(".html") else source


def _escaped(value: Any) -> Any:
    """Output policy of every `{{ }}`: None is empty; markup from a macro passes; anything else is
    escaped with the named entities (&quot;, &amp;, &lt;, &gt;, &#x27;) earlier reports used."""
    if value is None:
        return Markup("")
    if hasattr(value, "__html__"):
        return value
    return Markup(html.escape(str(value), quote=True))


ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("curation.report", "templates"),
    autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
    finalize=_escaped,
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    extensions=[_Compact],
)


def render_html(d: ReportData, th: Thumbnailer) -> str:
    """The report page. Sections request their tiles in page order; the footer counts them."""
    with_sem = d.sem is not None
    dup_budget = int(th.max_thumbs * (0.25 if with_sem else 0.3))
    rej_budget = int(th.max_thumbs * (0.25 if with_sem else 0.3))
    sem_budget = int(th.max_thumbs * 0.2) if with_sem else 0
    contexts = {
        "counts": sections.counts(d),
        "rejects": sections.rejects(d),
        "reject-samples": sections.reject_samples(d, th, rej_budget),
        "duplicates": sections.duplicates(d, th, dup_budget),
        "semantic-duplicates": sections.semantic(d, th, sem_budget),
        "classes": sections.classes(d, th, max(0, th.remaining)),
        "embedding-map": sections.embedding_map(d),
        "timings": sections.timings(d),
        "decode-errors": sections.decode_errors(d),
    }
    order = list(SECTIONS.items())
    imagenet = sections.imagenet(d)
    if imagenet is not None:
        contexts[IMAGENET_SECTION["id"]] = imagenet
        at = [sid for sid, _ in order].index(IMAGENET_SECTION["after"]) + 1
        order.insert(at, (IMAGENET_SECTION["id"], IMAGENET_SECTION["title"]))
    s = d.summary
    return ENV.get_template("page.html").render(
        title=d.title, generated_at=s["generated_at"], n_shards=s["n_shards"] if s["scope"] == "corpus" else None,
        kpis=sections.kpis(d), rendered=th.rendered, placeholders=th.placeholders,
        sections=[{"id": sid, "title": title, "template": _SECTION_TEMPLATES[sid], "c": contexts[sid]}
                  for sid, title in order],
    )


def write_report(d: ReportData, out_dir: str, th: Thumbnailer) -> dict[str, Any]:
    """Render the page, then write `report.html` and `summary.json` under `out_dir`."""
    page = render_html(d, th)
    d.summary["thumbnails"] = {"rendered": th.rendered, "placeholders": th.placeholders, "budget": th.max_thumbs}
    html_uri = storage.join(out_dir, "report.html")
    d.summary["report"] = html_uri
    storage.write_bytes_atomic(html_uri, page.encode("utf-8"))
    storage.write_json(d.summary, storage.join(out_dir, "summary.json"))
    return d.summary
