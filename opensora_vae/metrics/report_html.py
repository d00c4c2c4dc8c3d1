"""The eval's HTML report (`eval_common_metric.py --report`): one self-contained page a person
opens to see the numbers and where the reconstruction fails.

Sections: the summary (each metric with its bootstrap 95% interval, FVD with its video count),
the protocol card, warnings and skipped files, the per-frame curves (PSNR/SSIM/LPIPS by evaluated
frame index and by position inside the temporal VAE's chunk, matplotlib), a per-video table, and
for the worst videos strips of frames: real | reconstructed | difference.

Self-contained: no scripts, no external files; every image is a PNG in a ``data:`` URI. The
strips show exactly the frames that were scored: each video's recorded ``frame_indices`` read with
the eval's reader and preprocessed by the protocol (`protocol.preprocess`).

Everything here is built from the results dict (the JSON's content, `summary.summarize_results`),
so a report never shows a number the JSON does not hold.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..errors import OutputExistsError, check_folder_location
from ..files import atomic_write_text
from .protocol import EvalError
from .settings import EVAL_METRICS
from .summary import HIGHER_IS_BETTER

if TYPE_CHECKING:
    from .settings import EvalSettings

# The metric whose worst videos get frame strips: the first of these the results rank.
STRIP_METRICS = ("psnr", "ssim", "lpips", "flolpips")
# Columns of a strip: frames spread over the video, plus its worst frame.
STRIP_FRAMES = 8
# A frame is shown with its long side at most STRIP_MAX_SIDE pixels (area-averaged: styleganv
# scores stored sizes); small frames are magnified by whole pixels towards STRIP_MIN_SIDE.
STRIP_MIN_SIDE = 128
STRIP_MAX_SIDE = 256
# The difference row shows mean |real - reconstructed| over RGB on one colour scale for every
# video (so strips compare), saturating at this value (of [0, 1] pixels).
DIFF_MAX = 0.25
# Written into the page so a rerun can tell its own report of the same folders from any other file.
GENERATOR = "opensora-vae eval report"
_COMPARED = re.compile(r'<meta name="opensora-vae-compared" content="([^"]*)">')


def check_report(report: str | None, results_file: Path | None, real_dir: str | os.PathLike,
                 gen_dir: str | os.PathLike, overwrite: bool = False) -> Path | None:
    """Before any work: where ``--report`` writes (its value, or given bare the results JSON's
    path with ``.html``; None without ``--report``), checked: writable, not the JSON itself, and
    a file already there is this eval's report of the same two folders (a rerun replaces it) or
    ``overwrite`` is set; any other file is never replaced silently (the results JSON's rule,
    `evaluate.check_results_file`)."""
    if report is None:
        return None
    if not report:
        if results_file is None:
            raise EvalError("--report without a path writes next to the results JSON: give --res_dir, "
                            "or --report PATH.html")
        path = Path(results_file).with_suffix(".html")
    else:
        path = Path(report)
        if results_file is not None and path.resolve() == Path(results_file).resolve():
            raise EvalError(f"--report {report} is the results JSON's path; give the report another name")
    if path.is_dir():
        raise EvalError(f"cannot write the report to {path}: it is a folder")
    check_folder_location(path.parent, "cannot write the report under", EvalError)
    if not path.exists() or overwrite:
        return path
    try:
        head = path.read_text(errors="replace")[:4096]
    except OSError:
        head = ""
    found = _COMPARED.search(head)
    if found and html.unescape(found.group(1)) == _compared(real_dir, gen_dir):
        return path
    origin = f"the report of {html.unescape(found.group(1))}" if found else "a file this eval did not write"
    raise OutputExistsError(f"{path} holds {origin}; use another --report path, or --overwrite to replace it")


def _compared(real_dir: str | os.PathLike, gen_dir: str | os.PathLike) -> str:
    return f"{Path(real_dir).resolve()} vs {Path(gen_dir).resolve()}"


def write_report(results: dict, real_dir: str | os.PathLike, gen_dir: str | os.PathLike,
                 settings: "EvalSettings", out_path: str | os.PathLike) -> Path:
    """Write the HTML report of ``results`` (the eval's result dict) to ``out_path``, whole or not
    at all. ``real_dir``/``gen_dir``: the folders compared (the strips read their frames)."""
    out_path = Path(out_path)
    page = render_report(results, real_dir, gen_dir, settings)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_path, page)
    return out_path


def render_report(results: dict, real_dir: str | os.PathLike, gen_dir: str | os.PathLike,
                  settings: "EvalSettings") -> str:
    """The page's HTML text."""
    protocol = results.get("protocol", {})
    sections = [
        _summary_section(results),
        _protocol_section(protocol),
        _notes_section(results),
        _curves_section(results, settings),
        _videos_section(results),
        _worst_section(results, real_dir, gen_dir, settings),
    ]
    title = f"VAE eval report: {protocol.get('name', '?')} protocol, {results.get('num_videos', 0)} video(s)"
    compared = _compared(real_dir, gen_dir)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<meta name=\"generator\" content=\"{GENERATOR}\">\n"
        f"<meta name=\"opensora-vae-compared\" content=\"{_e(compared)}\">\n"
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<h1>{_e(title)}</h1>\n"
        f"<p class=\"compared\">real <code>{_e(Path(real_dir).resolve())}</code><br>"
        f"reconstructed <code>{_e(Path(gen_dir).resolve())}</code></p>\n"
        + "\n".join(sections) + "\n</body>\n</html>\n"
    )


_CSS = """
body { font-family: system-ui, sans-serif; margin: 24px auto; max-width: 1240px; color: #1d1d1f; padding: 0 16px; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 8px 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; font-family: ui-monospace, monospace; }
tr.worst td { background: #fff1f0; }
table.card td { max-width: 900px; word-break: break-word; }
.warn { background: #fff8e1; border-left: 4px solid #f0b400; padding: 4px 10px; margin: 4px 0; }
img { max-width: 100%; height: auto; display: block; }
figure { margin: 12px 0 24px; } figure.strip { overflow-x: auto; }
table.strip th { font-weight: normal; font-size: 0.8em; text-align: center; vertical-align: middle; border: none; }
table.strip td { border: none; padding: 1px; }
img.frame { max-width: none; image-rendering: pixelated; } img.legend { width: 420px; }
figcaption { font-size: 0.9em; color: #444; margin-bottom: 4px; }
code { font-size: 0.9em; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _number(value: float | None) -> str:
    return "n/a" if value is None else format(value, ".6f")


def _metric_names(results: dict) -> list[str]:
    return [m for m in EVAL_METRICS if m in results]


def _summary_section(results: dict) -> str:
    rows = []
    for metric in _metric_names(results):
        value, ci = results[metric], results.get(f"{metric}_ci95")
        shown_ci = "n/a" if ci is None else f"[{_number(ci[0])}, {_number(ci[1])}]"
        ci_attrs = "" if ci is None else f' data-low="{ci[0]!r}" data-high="{ci[1]!r}"'
        better = "higher is better" if metric in HIGHER_IS_BETTER else "lower is better"
        if metric == "fvd":
            better += f"; {results.get('fvd_num_videos')} video(s)" + (
                "; singular covariance: not comparable with published values"
                if results.get("fvd_singular_covariance") else "")
        rows.append(f'<tr data-metric="{metric}"><th>{metric}</th>'
                    f'<td class="num value" data-value="{value!r}">{_number(value)}</td>'
                    f'<td class="num ci"{ci_attrs}>{shown_ci}</td><td>{_e(better)}</td></tr>')
    counts = (f"{results.get('num_videos', 0)} pair(s) evaluated, {results.get('num_frames_evaluated', 0)} frames, "
              f"{results.get('num_skipped', 0)} skipped, {results.get('num_fps_mismatch', 0)} at different frame rates")
    return ('<section id="summary"><h2>Summary</h2>'
            '<table class="summary"><tr><th>metric</th><th>value</th><th>95% interval (bootstrap)</th><th></th></tr>'
            + "".join(rows) + f"</table><p class=\"counts\">{_e(counts)}</p></section>")


def _protocol_section(protocol: dict) -> str:
    rows = []
    for key, value in protocol.items():
        shown = json.dumps(value) if isinstance(value, (dict, list)) else ("none" if value is None else value)
        rows.append(f'<tr data-field="{_e(key)}"><th>{_e(key)}</th><td>{_e(shown)}</td></tr>')
    return ('<section id="protocol"><h2>Protocol card</h2>'
            '<p>Every choice behind the numbers; compare only numbers computed with the same card.</p>'
            '<table class="card">' + "".join(rows) + "</table></section>")


def _notes_section(results: dict) -> str:
    notes = [f'<p class="warn">{_e(w)}</p>' for w in results.get("warnings", [])]
    notes += [f'<p class="warn">skipped {_e(s["name"])}: {_e(s["reason"])}</p>' for s in results.get("skipped", [])]
    if not notes:
        return '<section id="warnings"><h2>Warnings</h2><p>none</p></section>'
    return '<section id="warnings"><h2>Warnings</h2>' + "".join(notes) + "</section>"


def _png(fig) -> str:
    """A matplotlib figure as a PNG data URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _series(values: Sequence[float | None]) -> np.ndarray:
    return np.array([math.nan if v is None else v for v in values], dtype=np.float64)


def _curve_plot(curves: dict[str, list], xlabel: str, title: str, boundaries: Sequence[float] = ()) -> str:
    from matplotlib.figure import Figure

    metrics = [m for m in EVAL_METRICS if curves.get(m)]
    fig = Figure(figsize=(11, 2.4 * len(metrics) + 0.6), dpi=100, layout="constrained")
    axes = fig.subplots(len(metrics), 1, sharex=True, squeeze=False)[:, 0]
    fig.suptitle(title)
    for ax, metric in zip(axes, metrics):
        y = _series(curves[metric])
        ax.plot(np.arange(len(y)), y, marker="o", markersize=3, linewidth=1.2)
        for b in boundaries:
            ax.axvline(b, color="#d33", linestyle="--", linewidth=0.8)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel(xlabel)
    return _png(fig)


def _curves_section(results: dict, settings: "EvalSettings") -> str:
    per_frame = results.get("per_frame_index", {})
    per_chunk = results.get("per_chunk_position", {})
    figures = []
    if any(per_frame.values()):
        # Chunk seams on the frame axis: evaluated frame k is file frame k * sample_rate (stride spread).
        longest = max(len(v) for v in per_frame.values())
        seams = [k - 0.5 for k in range(1, longest)
                 if settings.card.frame_spread == "stride" and k * settings.sample_rate % settings.chunk_frames == 0]
        uri = _curve_plot(per_frame, "evaluated frame index k", "Mean over videos at each evaluated frame", seams)
        figures.append(f'<figure id="per-frame-index"><figcaption>By evaluated frame index (FloLPIPS: frame pair '
                       f'k → k+1). Dashed: start of a {settings.chunk_frames}-frame chunk of the temporal VAE.'
                       f'</figcaption><img alt="metrics by frame index" src="{uri}"></figure>')
    if any(per_chunk.values()):
        uri = _curve_plot(per_chunk, f"position inside the {settings.chunk_frames}-frame chunk (file frame index mod "
                          f"{settings.chunk_frames})", "Mean over videos by position inside the temporal VAE's chunk")
        figures.append('<figure id="per-chunk-position"><figcaption>By position inside the chunk: seams of a causal '
                       'video VAE show at the first positions.</figcaption>'
                       f'<img alt="metrics by chunk position" src="{uri}"></figure>')
    return '<section id="curves"><h2>Per-frame curves</h2>' + ("".join(figures) or "<p>no per-frame values</p>") \
        + "</section>"


def _strip_metric(results: dict) -> str | None:
    worst = results.get("worst_videos", {})
    return next((m for m in STRIP_METRICS if worst.get(m)), None)


def _videos_section(results: dict) -> str:
    videos = sorted(results.get("per_video", {}).items(), key=lambda kv: kv[1].get("index", 0))
    metrics = [m for m in _metric_names(results) if m != "fvd"]
    metric = _strip_metric(results)
    worst = {w["name"] for w in results.get("worst_videos", {}).get(metric, [])} if metric else set()
    head = "".join(f"<th>{m}</th>" for m in ["#", "name", "frames", *metrics, "fps real / rec", "FVD"])
    rows = []
    for name, record in videos:
        fps = record.get("fps")
        fps_shown = "image" if not fps else f"{fps['real']:g} / {fps['generated']:g}" + (
            " (differ)" if record.get("fps_mismatch") else "")
        fvd = "" if "fvd" not in results else (record.get("fvd_excluded") or "in")
        cells = "".join(f'<td class="num" data-metric="{m}">{_number(record.get(m))}</td>' for m in metrics)
        shade = ' class="worst"' if name in worst else ""
        rows.append(f'<tr data-video="{_e(name)}"{shade}>'
                    f'<td class="num">{record.get("index")}</td><td>{_e(name)}</td>'
                    f'<td class="num">{record.get("num_frames")}</td>{cells}<td>{_e(fps_shown)}</td>'
                    f"<td>{_e(fvd)}</td></tr>")
    note = f" Shaded: the worst by {metric} (strips below)." if metric else ""
    return (f'<section id="videos"><h2>Per video ({len(videos)})</h2><p>Each video\'s mean over its frames.{note}</p>'
            '<table class="videos"><tr>' + head + "</tr>" + "".join(rows) + "</table></section>")


def _strip_columns(values: Sequence[float] | None, count: int, metric: str) -> list[int]:
    """Frames a strip shows: spread over the video, always with its worst frame."""
    picked = set(np.linspace(0, count - 1, min(count, STRIP_FRAMES - 1)).round().astype(int).tolist())
    if values:
        scores = np.asarray(values, dtype=np.float64)
        picked.add(int(np.argmin(scores) if metric in HIGHER_IS_BETTER else np.argmax(scores)))
    return sorted(picked)


def scored_frames(record: dict, real_dir: str | os.PathLike, gen_dir: str | os.PathLike,
                  settings: "EvalSettings", positions: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """The scored frames at ``positions`` (of the evaluated frames) of one ``per_video`` record,
    both files read by the eval's reader and preprocessed by the protocol: float (T, H, W, 3) in
    [0, 1] each."""
    from ..data.video_io import VideoFile, is_image, read_image
    from .protocol import preprocess

    indices = [record["frame_indices"][p] for p in positions]
    out = []
    for folder, key in ((real_dir, "real"), (gen_dir, "generated")):
        path = Path(folder) / Path(record[key]).name
        if is_image(path):
            frames = read_image(path)[None]
        else:
            with VideoFile(path) as video:
                frames = video.read(indices)
        out.append(preprocess(frames, settings.resolution, settings.crop_size).permute(0, 2, 3, 1).numpy())
    return out[0], out[1]


def _frame_png(pixels: np.ndarray) -> str:
    """uint8 (H, W, 3) pixels as a PNG data URI (lossless: reconstruction artefacts stay as scored)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=3)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _display(frames: np.ndarray) -> tuple[np.ndarray, int]:
    """(T, H, W, C) float frames at most STRIP_MAX_SIDE on the long side (area average), and the
    whole-pixel magnification the page shows them at (towards STRIP_MIN_SIDE)."""
    h, w = frames.shape[1:3]
    if max(h, w) > STRIP_MAX_SIDE:
        import torch
        import torch.nn.functional as F

        scale = STRIP_MAX_SIDE / max(h, w)
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        x = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32)).permute(0, 3, 1, 2)
        frames = F.interpolate(x, size=size, mode="area").permute(0, 2, 3, 1).numpy()
    return frames, max(1, STRIP_MIN_SIDE // max(frames.shape[1:3]))


def strip_images(real: np.ndarray, gen: np.ndarray) -> tuple[list[np.ndarray], int]:
    """The rows of a strip as uint8 (T, h, w, 3): real, reconstructed, and mean |real -
    reconstructed| over RGB coloured on the page's one scale (inferno, 0 to DIFF_MAX); and the
    magnification they are shown at."""
    from matplotlib import colormaps

    diff = np.abs(real.astype(np.float64) - gen).mean(axis=-1, keepdims=True)  # of the scored pixels
    (real, gen, diff), zoom = zip(*(_display(x) for x in (real, gen, diff)))
    colour = colormaps["inferno"](np.clip(diff[..., 0] / DIFF_MAX, 0, 1), bytes=True)[..., :3]
    return [_to_uint8(real), _to_uint8(gen), colour], zoom[0]


def _to_uint8(frames: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(frames * 255.0), 0, 255).astype(np.uint8)


def _diff_legend() -> str:
    """The colour scale of every difference row (matplotlib colorbar)."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2, 0.75), dpi=100, layout="constrained")
    fig.colorbar(ScalarMappable(Normalize(0, DIFF_MAX), colormaps["inferno"]), cax=fig.add_subplot(),
                 orientation="horizontal", label="|real − reconstructed|, mean over RGB (pixels in [0, 1])")
    return _png(fig)


def _strip_table(real: np.ndarray, gen: np.ndarray, positions: list[int], record: dict, metric: str) -> str:
    rows, zoom = strip_images(real, gen)
    h, w = rows[0].shape[1:3]
    size = f'width="{w * zoom}" height="{h * zoom}"'
    values = record.get("frames", {}).get(metric)
    head = "".join(f"<th>frame {record['frame_indices'][p]}"
                   + (f"<br>{metric} {values[p]:.4g}" if values and p < len(values) else "") + "</th>"
                   for p in positions)
    body = "".join(f"<tr><th>{label}</th>" + "".join(f'<td><img class="frame" {size} alt="{label} frame '
                                                     f'{record["frame_indices"][p]}" src="{_frame_png(row[c])}"></td>'
                                                     for c, p in enumerate(positions)) + "</tr>"
                   for label, row in zip(("real", "reconstructed", "|difference|"), rows))
    return f'<table class="strip"><tr><th></th>{head}</tr>{body}</table>'


def _worst_section(results: dict, real_dir: str | os.PathLike, gen_dir: str | os.PathLike,
                   settings: "EvalSettings") -> str:
    from ..data.video_io import MediaReadError

    metric = _strip_metric(results)
    if metric is None:
        return '<section id="worst"><h2>Worst videos</h2><p>no per-video metric to rank by</p></section>'
    figures = []
    for entry in results["worst_videos"][metric]:
        name = entry["name"]
        record = results["per_video"][name]
        positions = _strip_columns(record.get("frames", {}).get(metric), record["num_frames"], metric)
        caption = f"{_e(name)}: {metric} {_number(entry['value'])}"
        try:
            real, gen = scored_frames(record, real_dir, gen_dir, settings, positions)
            body = _strip_table(real, gen, positions, record, metric)
        except (MediaReadError, OSError) as exc:  # the numbers stand; only the picture is missing
            body = f'<p class="warn">frames could not be read again: {_e(exc)}</p>'
        figures.append(f'<figure class="strip" data-video="{_e(name)}"><figcaption>{caption}</figcaption>{body}'
                       "</figure>")
    legend = (f'<p>Columns: evaluated frames spread over the video and its worst frame, as scored (after the '
              f"protocol's resize and crop; small frames magnified by whole pixels). Difference: one colour scale "
              f'for every video, bright at {DIFF_MAX:g} or more:</p><img class="legend" alt="difference colour '
              f'scale" src="{_diff_legend()}">')
    return (f'<section id="worst"><h2>Worst {len(figures)} video(s) by {metric}</h2>' + legend + "".join(figures)
            + "</section>")
