"""`advisor report` writes one self-contained page; a real headless browser renders it."""
import re
import shutil
import subprocess

import pytest
from click.testing import CliRunner

from advisor.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    out = tmp_path_factory.mktemp("r") / "report.html"
    r = CliRunner().invoke(main, ["report", "--model", "llama3.1-8b", "--gpus", "l4,h100-sxm", "--out", str(out)])
    assert r.exit_code == 0, r.output
    return out


def test_report_is_self_contained(page):
    text = page.read_text()
    assert text.count("<svg") == 5  # 2 GPUs x (Pareto + roofline) + capacity
    assert not re.search(r"""(src|href)=["']https?:""", text), "the page must not load anything from the network"
    assert "pareto" in text and "Roofline" in text and "GPUs needed" in text


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (.ci/run installs it)")
def test_report_renders_in_headless_chromium(page, tmp_path):
    dom = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'ud'}", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    assert 'data-ready="1"' in dom and 'data-charts="5"' in dom
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'ud2'}", "--window-size=1200,2000",
                    f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 20_000


def test_report_bad_input(tmp_path):
    r = CliRunner().invoke(main, ["report", "--model", "llama9", "--out", str(tmp_path / "x.html")])
    assert r.exit_code == 2 and "unknown model" in r.stderr


def test_charts_have_ticks_labels_and_legends_that_fit(page):
    """Issue 15: real ticks on both axes, labelled axes, legends inside the chart."""
    from advisor.report import W
    text = page.read_text()
    charts = re.findall(r"<svg class=\"chart\".*?</svg>", text, re.S)
    assert len(charts) == 5
    for c in charts:
        assert len(re.findall(r'class="tick xtick"', c)) >= 3 and len(re.findall(r'class="tick ytick"', c)) >= 3
        assert len(re.findall(r'class="axis-label"', c)) == 2
        for x, size, label in re.findall(r'<text class="legend" x="([\d.]+)"[^>]*font-size="(\d+)"[^>]*>([^<]*)<', c):
            assert float(x) + 0.6 * int(size) * len(label) <= W, label


def test_tick_positions():
    from advisor.report import _fmt_tick, _ticks
    assert _ticks(0.0, 3.0, True) == [0.0, 1.0, 2.0, 3.0]
    few = _ticks(0.1, 0.9, True)  # less than a decade: 2 and 5 join
    assert len(few) >= 2 and all(0.1 <= v <= 0.9 for v in few)
    assert _ticks(0, 10, False) == [0, 2, 4, 6, 8, 10]
    assert 5 <= len(_ticks(775, 1900, False)) <= 12
    assert _fmt_tick(3.0, True) == "1000" and _fmt_tick(5.0, True) == "1e5"


def test_report_into_a_missing_folder_is_an_input_error(tmp_path):
    r = CliRunner().invoke(main, ["report", "--model", "llama3.1-8b", "--gpus", "l4",
                                  "--out", str(tmp_path / "no" / "such" / "r.html")])
    assert r.exception is None or isinstance(r.exception, SystemExit)
    assert r.exit_code == 2 and "does not exist" in r.output


def test_report_takes_all_gpus(tmp_path):
    """`report --gpus all` was refused (issue 15): it charts every GPU of the catalog."""
    from profiles import load
    out = tmp_path / "all.html"
    r = CliRunner().invoke(main, ["report", "--model", "llama3.1-8b", "--gpus", "all", "--out", str(out)])
    assert r.exit_code == 0, r.output
    text = out.read_text()
    assert sum(gid in text for gid in load().gpus) == len(load().gpus)
