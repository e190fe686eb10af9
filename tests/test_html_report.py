"""`expkit report`: one self-contained HTML page, checked as text and as a real headless Chromium
renders it (the browser tests skip when no Chromium is installed: `apt-get install chromium`)."""

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from expkit import api
from expkit.cli import main
from expkit.report.html import render_html_report

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
needs_browser = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (apt-get install chromium)")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A three-trial sweep (one trial trained with test_each_epoch) and a plain run beside it."""
    root = tmp_path_factory.mktemp("report")
    base = {"name": "sw", "seed": 3,
            "data": {"dataset": "synthetic", "options": {"n_train": 120, "n_test": 40, "shape": [8, 8], "classes": 3}},
            "model": {"layers": [{"flatten": {}}, {"dense": {"units": 16, "activation": "relu"}},
                                 {"dense": {"units": 3, "activation": "softmax"}}]},
            "train": {"optimizer": "adam", "learning_rate": 0.01, "epochs": 2, "batch_size": 16, "verbose": 0}}
    sweep = api.sweep({**base, "sweep": {"grid": {"train.learning_rate": [0.03, 0.01, 0.001]}}}, runs_dir=root / "runs")
    single = api.run({**base, "name": "single>x", "train": {**base["train"], "batch_size": 32}}, runs_dir=root / "runs")
    return root, sweep.path, single.path


@pytest.fixture(scope="module")
def report(runs):
    root, sweep, single = runs
    out = root / "report.html"
    assert main(["report", str(sweep), str(single), "-o", str(out)]) == 0
    return out


def test_the_page_needs_nothing_outside_itself(report):
    text = report.read_text()
    assert text.startswith("<!doctype html>") and '<meta name="viewport"' in text
    assert not re.search(r"""\b(src|href)\s*=\s*(?!["']?(data:|#))""", text)  # every src is inline data
    assert "<link" not in text and "@import" not in text and "url(" not in text
    assert len(re.findall(r'<img alt="[^"]*" width="\d+" height="\d+" src="data:image/png;base64,', text)) >= 6
    assert "single&gt;x" in text and "single>x" not in text  # labels are escaped


def test_each_run_shows_its_config_differences_against_the_baseline(runs):
    root, sweep, single = runs
    text = render_html_report([sweep, single], baseline="single>x")
    cards = re.findall(r'<article class="run".*?</article>', text, flags=re.S)
    assert len(cards) == 4
    baseline = next(c for c in cards if "single&gt;x</h3>" in c)
    assert "This is the baseline" in baseline
    trial = next(c for c in cards if "sw[learning_rate=0.001]</h3>" in c)
    assert "<td>train.learning_rate</td><td>0.01 → <strong>0.001</strong></td>" in trial
    assert "<td>train.batch_size</td><td>32 → <strong>16</strong></td>" in trial
    assert "<td>name</td>" not in trial  # names and seeds are not config differences


def chromium(tmp_path, page: Path | str, *args, size="1280,2000"):
    """Run headless Chromium on `page` (a file, or a URL as text); returns (dumped DOM, console lines)."""
    out = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
                          f"--window-size={size}", *args, page if isinstance(page, str) else page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    console = [line for line in out.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    return out.stdout, console


PROBE = """<script>
(function () {
  var table = document.getElementById("comparison");
  var heads = Array.prototype.slice.call(table.tHead.rows[0].cells);
  var col = heads.findIndex(function (h) { return h.textContent === "best_val_accuracy"; });
  function column() {
    return Array.prototype.map.call(table.tBodies[0].rows, function (r) { return r.cells[col].getAttribute("data-v"); });
  }
  var before = column();
  heads[col].click(); var up = column();
  heads[col].click(); var down = column();
  var probe = document.createElement("pre");
  probe.id = "probe";
  probe.textContent = JSON.stringify({before: before, up: up, down: down, sort: heads[col].getAttribute("aria-sort"),
    scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth,
    images: Array.prototype.filter.call(document.images, function (i) { return i.complete && i.naturalWidth > 0; }).length});
  document.body.appendChild(probe);
})();
</script>"""


def probed(tmp_path, report: Path, **kwargs) -> tuple[dict, list[str], str]:
    page = tmp_path / "probed.html"
    page.write_text(report.read_text().replace("</body>", PROBE + "</body>"))
    dom, console = chromium(tmp_path, page, "--dump-dom", **kwargs)
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, flags=re.S)
    assert found, dom[-2000:]
    return json.loads(html.unescape(found.group(1))), console, dom


@needs_browser
def test_the_browser_renders_every_row_and_logs_no_error(tmp_path, report, runs):
    dom, console = chromium(tmp_path, report, "--dump-dom")
    assert console == []
    body = re.search(r'<table class="sortable" id="comparison">.*?<tbody>(.*?)</tbody>', dom, flags=re.S).group(1)
    labels = re.findall(r"<tr><td>([^<]*)</td>", body)
    assert labels == ["sw[learning_rate=0.03]", "sw[learning_rate=0.01]", "sw[learning_rate=0.001]", "single&gt;x"]
    assert dom.count('<article class="run"') == 4


@needs_browser
def test_the_console_check_catches_a_script_error(tmp_path, report):
    """The check above would see an error: a page with one logs it."""
    broken = tmp_path / "broken.html"
    broken.write_text(report.read_text().replace("</body>", "<script>undefinedFunction();</script></body>"))
    _, console = chromium(tmp_path, broken, "--dump-dom")
    assert any("Uncaught ReferenceError: undefinedFunction is not defined" in line for line in console)


@needs_browser
def test_clicking_a_header_sorts_the_table(tmp_path, report):
    result, console, _ = probed(tmp_path, report)
    assert console == []
    values = [float(v) for v in result["before"]]
    assert [float(v) for v in result["up"]] == sorted(values)
    assert [float(v) for v in result["down"]] == sorted(values, reverse=True)
    assert result["sort"] == "descending" and result["images"] >= 6


PHONE = """<!doctype html><html><body style="margin:0">
<iframe id="phone" src="REPORT" style="width:360px;height:780px;border:0"></iframe>
<script>
window.addEventListener("load", function () {
  var page = document.getElementById("phone").contentDocument;
  var probe = document.createElement("pre");
  probe.id = "probe";
  probe.textContent = JSON.stringify({scrollWidth: page.documentElement.scrollWidth,
                                      innerWidth: page.defaultView.innerWidth, rows: page.querySelectorAll("#comparison tbody tr").length});
  document.body.appendChild(probe);
});
</script></body></html>"""


@needs_browser
def test_a_phone_screen_needs_no_sideways_scrolling(tmp_path, report):
    """The page in a 360-pixel-wide frame (headless Chromium's window is at least 500 wide): only the
    comparison table scrolls sideways, inside its own box; the page itself does not."""
    phone = report.parent / "phone.html"
    phone.write_text(PHONE.replace("REPORT", report.name))
    dom, console = chromium(tmp_path, phone, "--dump-dom", "--allow-file-access-from-files", "--virtual-time-budget=5000")
    assert console == []
    result = json.loads(html.unescape(re.search(r'<pre id="probe">(.*?)</pre>', dom, flags=re.S).group(1)))
    assert result["innerWidth"] == 360 and result["scrollWidth"] <= result["innerWidth"] and result["rows"] == 4


@needs_browser
def test_a_screenshot_shows_the_page(tmp_path, report):
    shot = tmp_path / "shot.png"
    chromium(tmp_path, report, f"--screenshot={shot}", "--hide-scrollbars")
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
