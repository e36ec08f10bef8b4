"""rcnn report's page: report.json's contract on a synthetic run, the CLI, the pipeline, and the page in a real
headless Chromium (opened from file://: one entry per image, filters and sorting from the URL, 5,000 images
paginated, the full view, no network request)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from rcnn.cli import main
from rcnn.parse import Dataset
from rcnn.report import ERROR_TYPES, image_boxes, make_report
from rcnn.report.page import CSP, render_page
from rcnn.report.tide import tide_errors


# --------------------------------------------------------------------------- the report of a synthetic run


def fake_detections(dataset: Dataset) -> list[dict]:
    """Detections of every image built from its objects: found, shifted, relabelled, duplicated or missed, by turn."""
    other = {c: next(o for o in dataset.classes if o != c) for c in dataset.classes}
    dets, k = [], 0
    for a in dataset.images:
        for o in a.objects:
            x1, y1, x2, y2 = o.box
            w, h = x2 - x1, y2 - y1
            k += 1
            score = round(0.3 + 0.6 * ((k * 0.618) % 1), 4)
            turn = k % 5
            if turn == 0:
                continue  # missed
            label = other[o.label] if turn == 3 else o.label
            dx = 0.45 * w if turn == 2 else 0.0
            dets.append({"file_name": a.path, "category": label, "bbox": [x1 + dx, y1, w, h], "score": score})
            if turn == 4:
                dets.append({"file_name": a.path, "category": label, "bbox": [x1 + 2, y1 + 2, w, h], "score": score / 2})
        if k % 3 == 0:
            dets.append({"file_name": a.path, "category": dataset.classes[0], "bbox": [1, 1, 12, 12], "score": 0.6})
    return dets


@pytest.fixture(scope="module")
def synth_report(synth_parsed: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dataset = Dataset.load(synth_parsed)
    folder = tmp_path_factory.mktemp("report")
    (folder / "detections.json").write_text(json.dumps(fake_detections(dataset)))
    make_report(folder / "detections.json", dataset, folder / "report", split="all", workers=2)
    return folder / "report"


def test_report_json_keeps_the_contract(synth_report: Path, synth_parsed: Path):
    from rcnn.evaluate import evaluate, load_detections

    report = json.loads((synth_report / "report.json").read_text())
    dataset = Dataset.load(synth_parsed)
    dets = load_detections(synth_report.parent / "detections.json")
    assert report["map50"] == evaluate(dets, dataset, "all")["map50"]
    assert set(report["errors"]) == {*ERROR_TYPES, "per_class"}
    assert set(report["errors"]["per_class"]) == set(dataset.classes)
    assert all(set(v) == set(ERROR_TYPES) for v in report["errors"]["per_class"].values())
    assert [i["file_name"] for i in report["images"]] == [Path(a.path).name for a in dataset.images]
    for entry, b in zip(report["images"], image_boxes(dets, dataset.images, list(dataset.classes))):
        assert {"file_name", "tp", "fp", "fn"} <= set(entry)
        shown = b.det_scores >= report["conf"]
        assert entry["tp"] + entry["fp"] == int(shown.sum())
        assert entry["tp"] + entry["fn"] == len(b.gt_labels)  # no difficult objects here
    # every error type occurs in this case, and the miss count is the turns skipped
    assert all(report["error_counts"][t] > 0 for t in ("cls", "loc", "dupe", "bkg", "miss"))
    assert tide_errors(image_boxes(dets, dataset.images, list(dataset.classes)), list(dataset.classes)).map50 == report["map50"]
    pictures = {p.name for p in (synth_report / "thumbs").iterdir()}
    assert pictures == {i["picture"] for i in report["images"]} == {p.name for p in (synth_report / "full").iterdir()}


def test_page_is_self_contained(synth_report: Path):
    html = (synth_report / "index.html").read_text()
    assert f'<meta http-equiv="Content-Security-Policy" content="{CSP}">' in html
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)  # nothing fetched from a network
    assert not re.search(r"@import|url\(\s*['\"]?https?:|fetch\(|XMLHttpRequest", html)
    assert "<script src" not in html and "<link" not in html


def test_pictures_are_written_once(synth_report: Path, synth_parsed: Path):
    from rcnn.report.gallery import write_gallery

    before = {p: p.stat().st_mtime_ns for p in (synth_report / "thumbs").iterdir()}
    write_gallery(Dataset.load(synth_parsed).images, synth_report, workers=1)
    assert {p: p.stat().st_mtime_ns for p in (synth_report / "thumbs").iterdir()} == before


# --------------------------------------------------------------------------- the command line


def test_cli_report(synth_report: Path, synth_parsed: Path, tmp_path: Path):
    result = CliRunner().invoke(main, ["report", str(synth_report.parent / "detections.json"), str(synth_parsed),
                                       "--out", str(tmp_path / "r"), "--workers", "1", "--conf", "0.5"])
    assert result.exit_code == 0, result.output
    assert f"report: {tmp_path / 'r' / 'index.html'}" in result.output and "dAP@0.5 if fixed: cls" in result.output
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["conf"] == 0.5 and report["split"] == "test"
    assert len(report["images"]) == len(Dataset.load(synth_parsed).split("test"))


def test_cli_report_detect_run_folder(synth_report: Path, synth_parsed: Path, tmp_path: Path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(synth_report.parent / "detections.json", run / "detections.json")
    result = CliRunner().invoke(main, ["report", str(run), str(synth_parsed), "--out", str(tmp_path / "r"), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r" / "index.html").is_file()


@pytest.mark.parametrize("args, code, message", [
    (["--conf", "2"], 2, "Invalid value for '--conf'"),
    (["--threshold", "0.5"], 2, "apply only when DETECTIONS is a model folder"),
])
def test_cli_report_bad_options(synth_report: Path, synth_parsed: Path, tmp_path: Path, args, code, message):
    result = CliRunner().invoke(main, ["report", str(synth_report.parent / "detections.json"), str(synth_parsed),
                                       "--out", str(tmp_path / "r"), *args])
    assert result.exit_code == code
    assert message in result.output and "Traceback" not in result.output


def test_cli_report_bad_input_is_one_line(synth_parsed: Path, tmp_path: Path):
    bad = tmp_path / "dets.json"
    bad.write_text("{not json")
    result = CliRunner().invoke(main, ["report", str(bad), str(synth_parsed), "--out", str(tmp_path / "r")])
    assert result.exit_code == 1
    assert result.output.startswith("Error: detections file") and len(result.output.strip().splitlines()) == 1
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    good = tmp_path / "good.json"
    good.write_text("[]")
    result = CliRunner().invoke(main, ["report", str(good), str(synth_parsed), "--out", str(tmp_path / "mine")])
    assert result.exit_code == 1 and "already holds files that rcnn did not write" in result.output


def test_pipeline_report_setting():
    from rcnn.pipeline import PipelineConfig

    assert PipelineConfig().report is True
    assert PipelineConfig().with_settings(report=False).report is False
    result = CliRunner().invoke(main, ["pipeline", "--help"])
    assert "--no-report" in result.output


# --------------------------------------------------------------------------- the page in a real browser

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-default-apps",
                  "--host-resolver-rules=MAP * ~NOTFOUND"]  # even a request that slipped through would resolve nowhere


@pytest.fixture(scope="module")
def chromium() -> str:
    path = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    if path is None:
        if os.environ.get("CI", "").lower() == "true":  # CI installs it (.ci/run): there the test must run
            pytest.fail("chromium is not installed; .ci/run installs it with apt-get install chromium")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return path


def browse(chromium: str, url: str, tmp_path: Path, *extra: str) -> str:
    """The DOM of ``url`` after its scripts ran (stdout of --dump-dom), or what ``extra`` asks for."""
    result = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *extra, url],
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def entries(dom: str) -> list[str]:
    """The image ids of the gallery entries in the rendered DOM, in their order."""
    return re.findall(r'<figure class="entry" data-id="([^"]*)"', dom)


def page_requests(netlog: Path) -> set[str]:
    """URLs the page (a file:// document) asked the network for, from Chromium's NetLog (the browser's own
    background requests carry no file:// isolation key and are left out)."""
    out = set()
    for event in json.loads(netlog.read_text())["events"]:
        p = event.get("params") or {}
        if "url" in p and ("file://" in str(p.get("network_isolation_key", "")) or p.get("initiator") == "null"):
            out.add(p["url"])
    return {u for u in out if not u.startswith(("file:", "data:"))}


def test_browser_gallery_one_entry_per_image_and_no_network(chromium: str, synth_report: Path, tmp_path: Path):
    report = json.loads((synth_report / "report.json").read_text())
    url = (synth_report / "index.html").as_uri()
    dom = browse(chromium, url, tmp_path, f"--log-net-log={tmp_path / 'net.json'}", "--dump-dom")
    assert sorted(entries(dom)) == sorted(i["id"] for i in report["images"])
    assert f'data-matching="{len(report["images"])}"' in dom
    drawn = sum(len(i["dets"]) + len(i["gts"]) for i in page_data(synth_report)["images"])
    assert len(re.findall(r'<text [^>]*class="tag k-', dom)) == drawn  # one label per box drawn
    assert sum(len(i["dets"]) for i in page_data(synth_report)["images"]) == sum(i["tp"] + i["fp"] for i in report["images"])
    assert page_requests(tmp_path / "net.json") == set()
    browse(chromium, url, tmp_path, f"--screenshot={tmp_path / 'report.png'}", "--window-size=1280,2400", "--hide-scrollbars")
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_browser_netlog_check_can_fail(chromium: str, tmp_path: Path):
    page = tmp_path / "leaky.html"
    page.write_text('<!DOCTYPE html><html><body><img src="https://example.com/pixel.png"></body></html>')
    browse(chromium, page.as_uri(), tmp_path, f"--log-net-log={tmp_path / 'net.json'}", "--dump-dom")
    assert page_requests(tmp_path / "net.json") == {"https://example.com/pixel.png"}


def page_data(folder: Path) -> dict:
    html = (folder / "index.html").read_text()
    return json.loads(re.search(r'<script type="application/json" id="report-data">(.*?)</script>', html, re.S).group(1))


def test_browser_filters_and_sorting_from_the_url(chromium: str, synth_report: Path, tmp_path: Path):
    data = page_data(synth_report)
    images, classes = data["images"], data["classes"]

    def having(kind: str, cls: int | None = None) -> list[str]:  # the oracle of the page's filter
        rows = lambda i: [(d[4], d[7]) for d in i["dets"]] + [(g[4], "gt" if g[5] == "tp" else g[5]) for g in i["gts"]]
        return sorted(i["id"] for i in images if any(k == kind and cls in (None, c) for c, k in rows(i)))

    url = (synth_report / "index.html").as_uri()
    for query, expected in [("error=miss", having("miss")), ("error=loc", having("loc")),
                            (f"class={classes[1]}&error=cls", having("cls", 1))]:
        dom = browse(chromium, f"{url}#{query}", tmp_path, "--dump-dom")
        assert sorted(entries(dom)) == expected, query
        assert 0 < len(expected) < len(images), query  # the filter changed what is shown
        assert f'data-matching="{len(expected)}"' in dom, query
    dom = browse(chromium, f"{url}#sort=name", tmp_path, "--dump-dom")
    by_name = sorted(images, key=lambda i: (i["file_name"], i["id"]))
    assert entries(dom) == [i["id"] for i in by_name]
    dom = browse(chromium, url, tmp_path, "--dump-dom")  # worst first: most false positives plus false negatives
    worst = [next(i for i in images if i["id"] == e) for e in entries(dom)]
    assert [i["fp"] + i["fn"] for i in worst] == sorted((i["fp"] + i["fn"] for i in images), reverse=True)


def test_browser_5000_images_are_paginated(chromium: str, synth_report: Path, tmp_path: Path):
    data = page_data(synth_report)
    one = data["images"][0]
    many = [{**one, "id": f"img{k:05d}", "file_name": f"img{k:05d}.jpg", "picture": None} for k in range(5000)]
    summary = json.loads((synth_report / "report.json").read_text())
    page = tmp_path / "index.html"
    page.write_text(render_page({**summary, "model": {}, "plots": []}, many))
    dom = browse(chromium, page.as_uri(), tmp_path, "--dump-dom")
    assert len(entries(dom)) == 60 and 'data-matching="5000"' in dom
    dom = browse(chromium, page.as_uri() + "#sort=name&per=1000&page=5", tmp_path, "--dump-dom")
    assert entries(dom) == [f"img{k:05d}" for k in range(4000, 5000)]
    assert "images 4001–5000 of 5000 matching" in dom


@pytest.mark.slow
def test_pipeline_writes_the_report(tmp_path: Path, synth_data: Path, synth_parsed: Path):
    out = tmp_path / "out"
    args = ["pipeline", str(synth_data), "--out", str(out), "--epochs", "1", "--image-size", "96", "--max-side", "120",
            "--test-fraction", "0.25", "--workers", "1"]
    result = CliRunner().invoke(main, [*args, "--no-report"])
    assert result.exit_code == 0, result.output
    assert not (out / "report").exists() and "report:" not in result.output
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert f"report: {out / 'report' / 'index.html'}" in result.output
    report = json.loads((out / "report" / "report.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert report["map50"] == metrics["map50"] and len(report["images"]) == metrics["n_test_images"]
    assert report["model"]["arch"] == "faster" and report["model"]["backbone"] == metrics["backbone"]
    # a model folder: detected on the split first, into REPORT/detect, with the detection options given
    result = CliRunner().invoke(main, ["report", str(out / "model"), str(synth_parsed), "--out", str(tmp_path / "r"),
                                       "--workers", "1", "--device", "cpu", "--threshold", "0.2"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["model"]["arch"] == "faster" and report["model"]["detect"]["threshold"] == 0.2
    assert (tmp_path / "r" / "detect" / "detections.json").is_file() and (tmp_path / "r" / "index.html").is_file()


def test_browser_full_view_lists_every_box(chromium: str, synth_report: Path, tmp_path: Path):
    image = max(page_data(synth_report)["images"], key=lambda i: len(i["dets"]) + len(i["gts"]))
    dom = browse(chromium, f"{(synth_report / 'index.html').as_uri()}#open={image['id']}", tmp_path, "--dump-dom")
    assert re.search(r'<dialog id="viewer" open', dom)
    table = re.search(r'<table id="viewer-table">.*?</table>', dom, re.S).group(0)
    rows = re.findall(r"<tr[^>]*><td>([DG]\d+)</td><td>([^<]*)</td>", table)
    assert [r[0] for r in rows] == [f"D{k + 1}" for k in range(len(image["dets"]))] + [f"G{k + 1}" for k in range(len(image["gts"]))]
    assert f'src="full/{image["picture"]}"' in dom
    verdicts = re.findall(r"<td>((?:false positive|true positive|ground truth)[^<]*)</td>", table)
    assert len(verdicts) == len(rows)
