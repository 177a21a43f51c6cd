"""The HTML reports render in a real browser, plots included, without any network request.

Headless Chromium (Debian's `chromium`, driven by Playwright through `executable_path`;
no browser is ever downloaded) opens each report from file:// and checks: the page loads;
every <svg> has a non-zero rendered box; a screenshot of each plot's marks (lines, bars)
is not blank; every image decoded; nothing was logged as an error; and every request the
page made was file:// or data:. Anything else is also aborted by a route, so a regressed
report cannot reach the network while the test runs.

`assert_renders(path)` is the reusable check: call it on any report, e.g. each
`<run>/evaluate/<task>/report.html`.
"""

from __future__ import annotations

import atexit
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.integration

#: launch flags that work as root in a container and keep Chromium's own traffic off
LAUNCH_ARGS = ("--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--disable-dev-shm-usage")
ALLOWED_SCHEMES = ("file:", "data:")
#: a pixel counts as plot ink when its channels differ this much (the palette's colours;
#: the white background, grey grid lines, axes and black text do not)
_SATURATION = 60
_MIN_INK_PIXELS = 20

_MEASURE_SVG = """svg => {
  const box = svg.getBoundingClientRect();
  // Plot marks: lines and paths, and rects that carry a <title> (bars; legend swatches
  // have none, so a chart whose lines are missing cannot pass on its legend alone).
  const marks = [...svg.querySelectorAll('polyline, path, circle, rect')]
    .filter(e => e.tagName.toLowerCase() !== 'rect' || e.querySelector('title'));
  const rects = marks.map(e => e.getBoundingClientRect())
    .filter(r => r.width > 0 || r.height > 0);
  let union = null;
  if (rects.length) {
    union = [Math.min(...rects.map(r => r.left)) - box.left - 2,
             Math.min(...rects.map(r => r.top)) - box.top - 2,
             Math.max(...rects.map(r => r.right)) - box.left + 2,
             Math.max(...rects.map(r => r.bottom)) - box.top + 2];
  }
  return {width: box.width, height: box.height, marks: marks.length, union: union,
          label: svg.getAttribute('aria-label') || ''};
}"""
_IMAGES_DECODED = "() => [...document.images].filter(i => !(i.complete && i.naturalWidth > 0))" \
                  ".map(i => i.alt || i.src.slice(0, 40))"


def chromium_path() -> str | None:
    """The system Chromium, or None when it is not installed."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


@dataclass(frozen=True)
class Rendered:
    """What one page load showed: its requests and each plot's size and ink."""

    url: str
    requests: tuple[str, ...]
    svgs: tuple[dict[str, Any], ...]
    images: int


def _ink(png: bytes, box: list[float] | None) -> int:
    from PIL import Image

    with Image.open(BytesIO(png)) as im:
        rgb = im.convert("RGB")
    if box is not None:
        x0, y0 = max(0, int(box[0])), max(0, int(box[1]))
        x1, y1 = min(rgb.width, int(box[2]) + 1), min(rgb.height, int(box[3]) + 1)
        rgb = rgb.crop((x0, y0, x1, y1))
    pixels = np.asarray(rgb, dtype=np.int16)
    if pixels.size == 0:
        return 0
    return int(((pixels.max(axis=2) - pixels.min(axis=2)) > _SATURATION).sum())


def _painted(png: bytes) -> int:
    """Pixels that are not (near) white: anything drawn at all."""
    from PIL import Image

    with Image.open(BytesIO(png)) as im:
        pixels = np.asarray(im.convert("L"))
    return int((pixels < 235).sum())


_SHARED: dict[str, Any] = {}


def shared_browser() -> Any:
    """The process's headless Chromium (a Playwright BrowserContext with a fresh profile),
    started on first use; skips the test when Chromium is not installed. One is shared
    because Playwright's sync API allows one running instance per thread."""
    if "context" not in _SHARED:
        executable = chromium_path()
        if executable is None:
            pytest.skip("chromium is not installed (apt-get install chromium; .ci/run does)")
        from playwright.sync_api import sync_playwright

        profile = tempfile.TemporaryDirectory(prefix="chromium-profile-")
        pw = sync_playwright().start()
        context = pw.chromium.launch_persistent_context(
            profile.name, executable_path=executable, headless=True, args=list(LAUNCH_ARGS),
            viewport={"width": 1200, "height": 900}, service_workers="block")
        _SHARED.update(context=context, playwright=pw, profile=profile)
        atexit.register(close_shared_browser)  # for callers outside the fixture
    return _SHARED["context"]


def close_shared_browser() -> None:
    """Close the shared Chromium, if one runs (idempotent)."""
    if "context" in _SHARED:
        context, pw, profile = (_SHARED.pop(k) for k in ("context", "playwright", "profile"))
        try:
            context.close()
        finally:
            pw.stop()
            profile.cleanup()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """The shared Chromium for the module's pages (listed first by the tests that use it,
    so a machine without Chromium skips before the Spark run is built)."""
    try:
        yield shared_browser()
    finally:
        close_shared_browser()


def _assert_offline(path: str | Path, requests: list[str]) -> None:
    external = [r for r in requests if not r.startswith(ALLOWED_SCHEMES)]
    assert not external, f"{path}: the page made network requests: {external}"


def assert_renders(path: str | Path, *, min_svgs: int = 1, context: Any = None) -> Rendered:
    """Open a report in headless Chromium and assert it renders offline.

    Fails (AssertionError naming the problem) unless the page loads from file://, holds at
    least `min_svgs` <svg> plots each with a non-zero box and non-blank marks, every <img>
    decodes, the console logs no error and every request was file:// or data:. `context` is
    a Playwright BrowserContext; by default the shared one (`shared_browser`)."""
    context = shared_browser() if context is None else context
    url = Path(path).resolve().as_uri()
    page = context.new_page()
    requests: list[str] = []
    errors: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))

    def block(route: Any) -> None:
        if route.request.url.startswith(ALLOWED_SCHEMES):
            route.continue_()
        else:
            route.abort()

    page.route("**/*", block)
    try:
        page.goto(url, wait_until="load")
        _assert_offline(path, requests)
        assert page.url == url, f"{path}: landed on {page.url}, not {url}"
        assert page.title(), f"{path}: the page has no title (did it load?)"
        svgs = page.locator("svg").all()
        assert len(svgs) >= min_svgs, f"{path}: {len(svgs)} <svg> plots, expected >= {min_svgs}"
        measured = []
        for i, svg in enumerate(svgs):
            m = svg.evaluate(_MEASURE_SVG)
            name = f"{path}: svg #{i} ({m['label']!r})"
            assert m["width"] > 0 and m["height"] > 0, f"{name} has a zero box: {m}"
            assert m["marks"] and m["union"], f"{name} draws no plot marks"
            png = svg.screenshot()
            m["ink"] = _ink(png, m["union"])
            assert m["ink"] >= _MIN_INK_PIXELS, (
                f"{name} is blank where its marks are ({m['ink']} coloured pixels)")
            measured.append(m)
        undecoded = page.evaluate(_IMAGES_DECODED)
        assert not undecoded, f"{path}: images that did not decode: {undecoded}"
        full = page.screenshot(full_page=True)
        assert _painted(full) >= _MIN_INK_PIXELS, f"{path}: the page screenshot is blank"
        n_images = int(page.evaluate("() => document.images.length"))
    finally:
        page.close()
    _assert_offline(path, requests)
    assert not errors, f"{path}: console errors: {errors}"
    return Rendered(url, tuple(requests), tuple(measured), n_images)


# ---------------------------------------------------------------------------------------
# The reports of a tiny real run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, spark: Any) -> Any:
    """synth -> ingest -> dedup -> reports/dedup on a few images (real Spark; images give
    the report its data: URI thumbnails, and the text LSH S-curve is drawn from the config
    alone), then a hand-made train stage (real Ray training is tested in tests/train) and
    the summary stage over both."""
    from pipeline import modalities
    from pipeline.config import config_from_dict
    from pipeline.dedup.stage import dedup_report_stage, dedup_stage
    from pipeline.ingest.stage import ingest_stage
    from pipeline.orchestrator import Stage, run_pipeline
    from pipeline.orchestrator.stages import synth_stage
    from pipeline.report import summary_report_stage
    from pipeline.storage import Location, RunPaths, StageWriter

    root = tmp_path_factory.mktemp("render")
    cfg = config_from_dict({"run_id": "t", "storage": {"root": f"file://{root}"},
                            "modalities": ["images"], "synth": {"scale": 0.1},
                            "spark": {"shuffle_partitions": 2}})
    names = modalities.names()
    run_pipeline(cfg, [synth_stage(), *(ingest_stage(m) for m in names),
                       *(dedup_stage(m) for m in names), dedup_report_stage()])
    run = RunPaths(Location(f"file://{root}"), "t")
    losses = [(2.3, 2.2), (1.7, 1.9), (1.2, 1.8), (0.9, 1.8)]
    history = [{"epoch": float(i + 1), "train_loss": t, "val_loss": v}
               for i, (t, v) in enumerate(losses)]
    # A train stage as the trainer publishes it: result.json is its report.
    writer = StageWriter(run.stage("train/images"), "train/images")
    (writer.staging / "result.json").write_json(
        {"modality": "images", "history": history, "best_checkpoint": None,
         "best_val_loss": min(v for _, v in losses)})
    writer.publish(row_counts={"epochs": len(history)},
                   extra={"report": (run.stage("train/images") / "result.json").url})
    summary = summary_report_stage()
    published = {"dedup/images", "train/images"}
    disabled = [Stage(name=n, run=lambda ctx: pytest.fail("disabled"), config_of=lambda c: 0,
                      enabled=lambda c: False) for n in summary.inputs if n not in published]
    run_pipeline(cfg, [*disabled, summary])
    return run


def _local(loc: Any) -> Path:
    return Path(loc.url.removeprefix("file://"))


def test_dedup_report_renders_offline(browser: Any, tiny_run: Any) -> None:
    page = _local(tiny_run.stage("reports/dedup")) / "dedup.html"
    rendered = assert_renders(page, min_svgs=3, context=browser)
    assert rendered.images >= 2  # image pair thumbnails, inline data: URIs
    assert rendered.requests[0] == page.resolve().as_uri()


def test_summary_report_renders_offline(browser: Any, tiny_run: Any) -> None:
    page = _local(tiny_run.stage("reports/summary")) / "index.html"
    rendered = assert_renders(page, min_svgs=2, context=browser)
    labels = [s["label"] for s in rendered.svgs]
    assert labels == ["images: records", "images: loss per epoch"]
    hrefs = re.findall(r'<a href="([^"]+)"', page.read_text(encoding="utf-8"))
    assert hrefs == ["../dedup/dedup.html", "../../train/images/result.json"]
    assert all((page.parent / h).resolve().is_file() for h in hrefs), hrefs
    assert all(s["ink"] > 200 for s in rendered.svgs)


def _evaluation_report(task: str) -> dict[str, Any]:
    """A hand-made report dict of the shape pipeline.evaluate.report renders."""
    history = [{"epoch": 1.0, "train_loss": 1.9, "val_loss": 1.7},
               {"epoch": 2.0, "train_loss": 1.2, "val_loss": 1.4}]
    gate = {"gate": "min_fraud_roc_auc", "modality": task, "figure": "ROC-AUC",
            "value": 0.91, "threshold": 0.6, "op": ">=", "passed": True}
    report: dict[str, Any] = {"modality": task, "run_id": "t", "history": history,
                              "gates": [gate] if task == "transactions" else [],
                              "checkpoint": f"file:///ckpt/train_{task}/checkpoint_000004",
                              "checkpoint_digest": "ab" * 32, "data_digest": "cd" * 32,
                              "rows": {"test": 40}, "summary": f"{task} on 40 test rows"}
    if task == "text":
        report["metrics"] = {"perplexity": 31.5, "bits_per_byte": 2.1, "loss": 3.45,
                             "documents": 40, "bytes": 9000}
        report["samples"] = [{"prompt": "the river", "continuation": " bank <b>x</b>",
                              "reference": " flows"}]
        report["sampling"] = {"temperature": 0.8}
    elif task == "images":
        labels = ["circle", "square", "triangle"]
        report["metrics"] = {"accuracy": 0.8, "macro_f1": 0.78, "loss": 0.6, "rows": 40}
        report["details"] = {"labels": labels, "confusion": [[12, 1, 0], [2, 10, 1],
                                                             [0, 3, 11]],
                             "per_class": [{"label": lab, "precision": 0.8, "recall": r,
                                            "f1": r - 0.02, "support": 13}
                                           for lab, r in zip(labels, (0.92, 0.77, 0.79),
                                                             strict=True)]}
    else:
        report["metrics"] = {"roc_auc": 0.91, "pr_auc": 0.55, "threshold": 0.42,
                             "precision": 0.6, "recall": 0.5, "f1": 0.55, "rows": 40,
                             "positives": 4, "fraud_rate": 0.1}
        report["details"] = {"roc": {"fpr": [0.0, 0.1, 0.3, 1.0], "tpr": [0.0, 0.6, 0.9, 1.0]},
                             "pr": {"recall": [0.0, 0.5, 1.0], "precision": [1.0, 0.6, 0.1]},
                             "threshold_source": "best F1 on val",
                             "at_threshold": {"tp": 2, "fp": 1, "fn": 2, "tn": 35}}
    return report


@pytest.mark.parametrize(("task", "plots"), [("text", 1), ("images", 3), ("transactions", 3)])
def test_evaluation_reports_render_offline(task: str, plots: int, tmp_path: Path,
                                           browser: Any) -> None:
    from pipeline.evaluate.report import write_evaluation_report
    from pipeline.storage import Location

    page = tmp_path / "evaluate" / task / "report.html"
    write_evaluation_report(_evaluation_report(task), Location(str(page)),
                            Location(str(tmp_path / "evaluate" / task / "metrics.json")))
    rendered = assert_renders(page, min_svgs=plots, context=browser)
    assert len(rendered.svgs) == plots


def test_checker_catches_network_requests_and_blank_plots(tmp_path: Path,
                                                          browser: Any) -> None:
    """The checks are not vacuous: an external image, a blank plot and a zero-size plot
    each fail with a message saying which."""
    from pipeline import html as H

    chart = H.line_chart({"loss": ([1, 2, 3], [3.0, 2.0, 1.5])}, title="ok")
    good = tmp_path / "good.html"
    good.write_text(H.page("good", chart))
    assert assert_renders(good, context=browser).svgs[0]["ink"] > 0
    assert assert_renders(good).images == 0  # the integrator's call: the shared Chromium
    cases = {
        "network requests": H.Html('<img src="http://127.0.0.1:9/x.png" alt="x">' + chart),
        "draws no plot marks": H.Html('<svg width="200" height="100"><text x="5" y="20">'
                                      "empty</text></svg>"),
        "zero box": H.Html('<svg width="0" height="0"><polyline points="0,0 5,5"/></svg>'),
        "is blank where its marks are": H.Html(
            '<svg width="200" height="100"><polyline fill="none" stroke="white" '
            'points="10,10 190,90"><title>white</title></polyline></svg>'),
    }
    for problem, body in cases.items():
        bad = tmp_path / f"bad-{len(problem)}.html"
        bad.write_text(H.page("bad", body))
        with pytest.raises(AssertionError, match=problem):
            assert_renders(bad, context=browser)
