"""The report: self-contained HTML (nothing fetched from outside), stable Markdown, stable PNGs."""

from __future__ import annotations

import base64

import pytest
from evaluation_fixtures import ReferenceCollector, synthetic_measurements, synthetic_results
from matplotlib.figure import Figure

from mmfuse.evaluation.report import figures, png_base64, render_html, render_markdown


@pytest.fixture(scope="module")
def results() -> dict:
    return synthetic_results()


@pytest.fixture(scope="module")
def page(results: dict) -> str:
    return render_html(results, synthetic_measurements(), figures(results))


def test_html_references_nothing_outside_itself_and_embeds_its_plots(page: str) -> None:
    parser = ReferenceCollector()
    parser.feed(page)
    external = [ref for ref in parser.references if not ref.startswith("data:")]
    assert external == []
    assert parser.images == 5  # subsets, confusion, reliability, robustness, speakers
    for ref in parser.references:
        header, payload = ref.split(",", 1)
        assert header == "data:image/png;base64"
        assert base64.b64decode(payload).startswith(b"\x89PNG")
    assert "<link" not in page and "@import" not in page and "url(" not in page


def test_html_flags_speakers_where_fusion_is_worse(page: str) -> None:
    assert page.count('class="flag"') == 1
    assert "alice" in page.split('class="flag"')[1].split("</tr>")[0]


def test_markdown_has_the_tables_but_no_machine_dependent_numbers(results: dict) -> None:
    text = render_markdown(results)
    assert "| image+audio+text | 90.00 | 90.00 | 0 |" in text
    assert "Fusion below the best single modality on: alice." in text
    assert "latency" not in text.lower() and "ms" not in text.split()
    assert render_markdown(results) == text


def test_report_without_speakers_leaves_the_section_out() -> None:
    results = synthetic_results(with_speakers=False)
    page = render_html(results, synthetic_measurements(), figures(results))
    assert "Speakers" not in page and "Speakers" not in render_markdown(results)


def test_png_rendering_is_byte_stable() -> None:
    def draw() -> Figure:
        fig = Figure(figsize=(2, 2))
        fig.add_subplot().plot([0, 1], [1, 0])
        return fig

    assert png_base64(draw()) == png_base64(draw())
