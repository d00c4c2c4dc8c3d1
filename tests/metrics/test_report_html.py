"""`eval_common_metric.py --report` (issue 22): one self-contained HTML page whose numbers are the
JSON's, one row per video, frame strips of the worst videos, the protocol card; it loads in a
real headless browser (Debian's chromium) with every image rendered."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from opensora_vae.data.video_io import read_video_frames
from opensora_vae.metrics import EvalSettings, psnr
from opensora_vae.metrics.report_html import scored_frames
from tests.helpers import CLIP_17, EVAL_ENTRY, run_entry, write_eval_pairs

# Three videos, worst (noisiest) first; one name needs HTML escaping.
NOISE = {"loud<b>&x": 24, "mid": 10, "quiet": 3}
FLAGS = ["--num_frames", "17", "--resolution", "64", "--crop_size", "56", "--device", "cpu", "--batch_size", "2",
         "--metric", "ssim", "psnr", "--worst_k", "2", "--bootstrap", "200", "--no_progress"]


class _Node:
    def __init__(self, tag: str, attrs: dict, parent: "_Node | None"):
        self.tag, self.attrs, self.parent, self.children, self.text = tag, attrs, parent, [], ""

    def iter(self, tag: str | None = None):
        for child in self.children:
            if tag is None or child.tag == tag:
                yield child
            yield from child.iter(tag)

    def find(self, tag: str, **attrs) -> list["_Node"]:
        return [n for n in self.iter(tag) if all(n.attrs.get(k.rstrip("_")) == v for k, v in attrs.items())]

    @property
    def all_text(self) -> str:
        return self.text + "".join(c.all_text for c in self.children)


class _Tree(HTMLParser):
    """A minimal DOM of the page (the standard library's parser, entities unescaped)."""
    VOID = {"meta", "img", "br", "link", "input", "hr"}

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.root = self.node = _Node("#root", {}, None)
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        node = _Node(tag, dict(attrs), self.node)
        self.node.children.append(node)
        if tag not in self.VOID:
            self.node = node

    def handle_endtag(self, tag):
        node = self.node
        while node.parent is not None and node.tag != tag:
            node = node.parent
        if node.parent is not None:
            self.node = node.parent

    def handle_data(self, data):
        self.node.text += data


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    clip = read_video_frames(CLIP_17, range(17))[:, 100:172, 60:156]  # 17 frames of 72x96
    write_eval_pairs(root, {name: clip for name in NOISE}, NOISE)
    code = run_entry(EVAL_ENTRY, ["--real_video_dir", root / "real", "--generated_video_dir", root / "gen",
                                  "--res_dir", root / "out", "--report", *FLAGS])
    assert code == 0
    results = json.loads((root / "out" / "metric_17f_64res.json").read_text())
    page = (root / "out" / "metric_17f_64res.html").read_text()
    return root, results, page


def test_summary_values_and_intervals_are_the_jsons(evaluated):
    _, results, page = evaluated
    rows = {tr.attrs["data-metric"]: tr for tr in _Tree(page).root.find("tr") if "data-metric" in tr.attrs}
    assert set(rows) == {"ssim", "psnr"}
    for metric, row in rows.items():
        value = row.find("td", class_="num value")[0]
        assert float(value.attrs["data-value"]) == results[metric]
        assert value.all_text == format(results[metric], ".6f")
        ci = row.find("td", class_="num ci")[0]
        low, high = results[f"{metric}_ci95"]
        assert (float(ci.attrs["data-low"]), float(ci.attrs["data-high"])) == (low, high)
        assert ci.all_text == f"[{low:.6f}, {high:.6f}]"


def test_protocol_card_and_per_video_table(evaluated):
    _, results, page = evaluated
    tree = _Tree(page).root
    card = {tr.attrs["data-field"]: tr.find("td")[0].all_text for tr in tree.find("tr") if "data-field" in tr.attrs}
    assert card["name"] == "opensora" and set(card) == set(results["protocol"])
    for key, value in results["protocol"].items():
        expected = json.dumps(value) if isinstance(value, (dict, list)) else ("none" if value is None else str(value))
        assert card[key] == expected
    videos = [tr for tr in tree.find("tr") if "data-video" in tr.attrs]
    assert [tr.attrs["data-video"] for tr in videos] == sorted(NOISE)  # one row per video, pair order
    for tr in videos:
        cells = {td.attrs["data-metric"]: td.all_text for td in tr.find("td") if "data-metric" in td.attrs}
        record = results["per_video"][tr.attrs["data-video"]]
        assert cells == {m: format(record[m], ".6f") for m in ("ssim", "psnr")}


def _png_pixels(src: str) -> np.ndarray:
    png = Image.open(io.BytesIO(base64.b64decode(src.removeprefix("data:image/png;base64,"))))
    assert png.format == "PNG"
    return np.asarray(png.convert("RGB"))


def test_worst_videos_get_strips_of_the_scored_frames(evaluated):
    root, results, page = evaluated
    worst = [w["name"] for w in results["worst_videos"]["psnr"]]
    assert worst == ["loud<b>&x", "mid"]
    strips = _Tree(page).root.find("figure", class_="strip")
    assert [f.attrs["data-video"] for f in strips] == worst
    settings = EvalSettings(num_frames=17, resolution=64, crop_size=56, metrics=("psnr",), device="cpu")
    for figure in strips:
        record = results["per_video"][figure.attrs["data-video"]]
        real_row, gen_row, diff_row = [tr.find("img") for tr in figure.find("tr")[1:]]
        positions = [record["frame_indices"].index(int(img.attrs["alt"].split()[-1])) for img in real_row]
        worst_frame = int(np.argmin(record["frames"]["psnr"]))
        assert worst_frame in positions and positions[0] == 0 and positions[-1] == 16 and len(positions) >= 7
        assert len(gen_row) == len(diff_row) == len(positions)
        # The strips show the frames that were scored: re-scored, their PSNR is the JSON's.
        real, gen = scored_frames(record, root / "real", root / "gen", settings, positions)
        values = psnr(torch.from_numpy(real).permute(0, 3, 1, 2), torch.from_numpy(gen).permute(0, 3, 1, 2))
        assert values.tolist() == [record["frames"]["psnr"][p] for p in positions]
        for c, (r_img, g_img, d_img) in enumerate(zip(real_row, gen_row, diff_row)):
            assert np.array_equal(_png_pixels(r_img.attrs["src"]), np.rint(real[c] * 255).astype(np.uint8))
            assert np.array_equal(_png_pixels(g_img.attrs["src"]), np.rint(gen[c] * 255).astype(np.uint8))
            assert _png_pixels(d_img.attrs["src"]).shape == (56, 56, 3)
            assert r_img.attrs["width"] == "112" and r_img.attrs["height"] == "112"  # 56 px shown at 2x


def _image_count(results: dict) -> int:
    """Two curve plots, the difference legend, and 3 images per strip column."""
    columns = 0
    for entry in results["worst_videos"]["psnr"]:
        record = results["per_video"][entry["name"]]
        spread = set(np.linspace(0, record["num_frames"] - 1, 7).round().astype(int).tolist())
        columns += len(spread | {int(np.argmin(record["frames"]["psnr"]))})
    return 3 + 3 * columns


def test_page_is_self_contained(evaluated):
    _, _, page = evaluated
    tree = _Tree(page).root
    assert not tree.find("script") and not tree.find("link")
    links = [n.attrs.get(a) for n in tree.iter() for a in ("src", "href") if n.attrs.get(a)]
    assert links and all(link.startswith("data:image/png;base64,") for link in links)
    assert "http://" not in page and "https://" not in page
    assert len(tree.find("img")) == _image_count(evaluated[1])


def test_report_location_is_checked_before_any_work(evaluated, tmp_path):
    root, _, _ = evaluated
    base = ["--real_video_dir", root / "real", "--generated_video_dir", root / "gen", *FLAGS]
    assert run_entry(EVAL_ENTRY, [*base, "--report"]) == 2  # bare --report needs --res_dir
    assert run_entry(EVAL_ENTRY, [*base, "--report", tmp_path]) == 2  # a folder
    foreign = tmp_path / "notes.html"
    foreign.write_text("<p>mine</p>")
    assert run_entry(EVAL_ENTRY, [*base, "--report", foreign]) == 2
    assert foreign.read_text() == "<p>mine</p>"
    out = tmp_path / "out"
    assert run_entry(EVAL_ENTRY, [*base, "--res_dir", out, "--report", out / "metric_17f_64res.json"]) == 2
    assert not out.exists()  # refused before the eval wrote anything
    # The report of the same two folders is replaced by a rerun (the results JSON's rule).
    assert run_entry(EVAL_ENTRY, [*base, "--res_dir", root / "out", "--report"]) == 0


# --- the page in a real browser -------------------------------------------------------------

_PROBE = """<script>
window.addEventListener('error', e => document.documentElement.setAttribute('data-js-error', String(e.message)));
window.addEventListener('load', () => {
  const imgs = Array.from(document.images);
  document.documentElement.setAttribute('data-images',
    imgs.filter(i => i.complete && i.naturalWidth > 0).length + '/' + imgs.length);
});
</script>"""


def _chromium(profile: Path, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    # --no-sandbox: tests run as root in CI; the page is our own file. A profile of its own: no
    # lock shared with another browser or test run.
    return subprocess.run(["chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--user-data-dir={profile}",
                           "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000", *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="chromium is not on PATH (Debian: apt-get install chromium)")
@pytest.mark.timeout(300)
def test_report_renders_in_headless_chromium(evaluated, tmp_path):
    """Opened as a person would: no console error, every image decoded, a non-blank screenshot."""
    root, results, page = evaluated
    probe = tmp_path / "probed.html"
    probe.write_text(page.replace("</body>", _PROBE + "</body>"))
    dom = _chromium(tmp_path / "profile", "--dump-dom", probe.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    html_tag = _Tree(dom.stdout).root.find("html")[0]
    assert "data-js-error" not in html_tag.attrs
    count = _image_count(results)
    assert html_tag.attrs.get("data-images") == f"{count}/{count}"
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console

    shot = root / "out" / "report_screenshot.png"  # kept beside the report for a person to look at
    done = _chromium(tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,4000",
                     (root / "out" / "metric_17f_64res.html").as_uri())
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float64)
    assert pixels.shape[:2] == (4000, 1280)
    colours = len(np.unique(pixels.reshape(-1, 3)[::37], axis=0))
    assert pixels.std() > 20 and colours > 200  # text, plots and video frames, not a blank page
    assert not [line for line in done.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]


def test_report_without_intervals_fvd_and_unreadable_frames(tmp_path):
    """No bootstrap (intervals n/a), FVD with its count and the singular-covariance caveat, a name
    that needs escaping, and worst videos whose files are gone: the page still holds every
    number, and says the frames could not be read instead of failing."""
    from opensora_vae.metrics import summarize_results
    from opensora_vae.metrics.evaluate import ClipResult
    from opensora_vae.metrics.report_html import write_report

    settings = EvalSettings(metrics=("ssim", "psnr"), device="cpu", bootstrap=0, worst_k=1, chunk_frames=4)
    results = [ClipResult(index=i, name=name, num_frames=3, frame_indices=[0, 1, 2],
                          values={"ssim": [0.5 + i / 10] * 3, "psnr": [20.0 + i, 21.0 + i, 22.0 + i]},
                          means={"ssim": 0.5 + i / 10, "psnr": 21.0 + i}, real=f"gone/{name}.mp4",
                          generated=f"gone/{name}.mp4")
               for i, name in enumerate(["a\"b", "c"])]
    summary = summarize_results(results, settings)
    summary.update(fvd=123.25, fvd_ci95=None, fvd_num_videos=2, fvd_singular_covariance=True)
    out = write_report(summary, tmp_path / "real", tmp_path / "gen", settings, tmp_path / "r" / "report.html")
    tree = _Tree(out.read_text()).root
    rows = {tr.attrs["data-metric"]: tr for tr in tree.find("tr") if "data-metric" in tr.attrs}
    assert set(rows) == {"ssim", "psnr", "fvd"}
    assert rows["fvd"].find("td", class_="num value")[0].all_text == "123.250000"
    assert "2 video(s); singular covariance" in rows["fvd"].all_text
    assert all(row.find("td", class_="num ci")[0].all_text == "n/a" for row in rows.values())
    assert [tr.attrs["data-video"] for tr in tree.find("tr") if "data-video" in tr.attrs] == ["a\"b", "c"]
    (strip,) = tree.find("figure", class_="strip")
    assert strip.attrs["data-video"] == "a\"b" and not strip.find("img")
    assert "could not be read again" in strip.all_text and "file not found" in strip.all_text
    assert len(tree.find("img")) == 3  # the curves and the difference legend
