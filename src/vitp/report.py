"""``report.html``: the evaluation report that ``vitp test`` writes next to its exported files.

One self-contained page (inline CSS and JS, images as base64 data URIs, nothing fetched):

* per-class PQ / SQ / RQ of the proposer alone, ViT-P and oracle classes, as a table sortable by
  any column (click a header), each value drawn as a bar;
* the point classifier's confusion matrix on the evaluation's supervision points (rows: true
  class, columns: predicted; shaded by the row's share);
* the images where ViT-P helped and hurt most (per-image PQ of ViT-P minus the proposer's), each
  as proposer | ViT-P | ground truth overlays.

:class:`ReportCollector` gathers this during the test epoch (``ViTPModule`` feeds it each batch);
per image it keeps only small thumbnails, so memory does not grow with image size.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from PIL import Image

from vitp.metrics.panoptic import panoptic_stats
from vitp.predictions import nearest_resize
from vitp.structures import DatasetInfo, PanopticPrediction, Target

__all__ = ["ReportCollector"]

VARIANT_TITLES = {"proposer": "proposer alone", "vitp": "ViT-P", "oracle": "oracle classes"}


@dataclass
class _Shown:
    delta: float
    name: str
    image_path: str | None
    segments: dict[str, tuple[np.ndarray, np.ndarray]]  # panel -> (thumbnail segments, labels)
    pq: dict[str, float]


def _thumb(segments: torch.Tensor, side: int) -> np.ndarray:
    h, w = segments.shape
    s = min(1.0, side / max(h, w))
    return nearest_resize(segments.cpu(), (max(1, round(h * s)), max(1, round(w * s)))).numpy()


class ReportCollector:
    """Accumulates per-class panoptic statistics per variant, per-image PQ differences, and the
    point classifier's confusion matrix; :meth:`write` renders ``report.html``."""

    def __init__(self, info: DatasetInfo, images_shown: int = 4, thumb_side: int = 200) -> None:
        self.info = info
        self.k = info.num_classes
        self.images_shown, self.thumb_side = images_shown, thumb_side
        self.stats: dict[str, list[torch.Tensor]] = {}
        self.confusion = torch.zeros((self.k, self.k), dtype=torch.long)
        self.shown: list[_Shown] = []

    def add_batch(self, out: Any, batch: Any) -> None:
        """A ``vitp.pipeline.PipelineOutput`` of a test batch and the batch (its targets, points)."""
        if out.extra_point_logits is not None and batch.point_labels is not None:
            self.add_points(out.extra_point_logits, batch.point_labels)
        for i, target in enumerate(batch.targets):
            preds = {v: p[i].panoptic for v, p in out.predictions.items() if p[i].panoptic is not None}
            if preds:
                self.add_image(preds, target, str(target.file_name or target.image_id))

    def add_points(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Point logits ``float[..., >= K]`` and labels ``long[...]`` (-1 = padding)."""
        pred = logits[..., : self.k].argmax(-1).flatten().cpu()
        true = labels.flatten().cpu()
        keep = (true >= 0) & (true < self.k)
        self.confusion += torch.bincount(true[keep] * self.k + pred[keep], minlength=self.k * self.k).view(self.k, self.k)

    def add_image(self, predictions: Mapping[str, PanopticPrediction], target: Target, name: str) -> None:
        """One image's panoptic predictions per variant and its ground truth."""
        pq: dict[str, float] = {}
        for variant, pan in predictions.items():
            s = panoptic_stats(target.segments.cpu(), target.labels.cpu(), target.is_crowd.cpu(),
                               pan.segments.cpu(), pan.labels.cpu(), self.k)
            acc = self.stats.setdefault(variant, [torch.zeros(self.k, dtype=torch.float64)] +
                                        [torch.zeros(self.k, dtype=torch.long) for _ in range(3)])
            for a, v in zip(acc, s):
                a += v.cpu().to(a.dtype)
            iou, tp, fp, fn = (v.double().cpu() for v in s)
            present = (tp + fp + fn) > 0
            pq[variant] = float((iou / (tp + 0.5 * fp + 0.5 * fn).clamp(min=1e-12))[present].mean() * 100) \
                if bool(present.any()) else float("nan")
        if "vitp" not in pq or "proposer" not in pq or math.isnan(pq["vitp"]) or math.isnan(pq["proposer"]):
            return
        panels = {v: (_thumb(predictions[v].segments, self.thumb_side), predictions[v].labels.cpu().numpy())
                  for v in ("proposer", "vitp")}
        panels["ground truth"] = (_thumb(target.segments, self.thumb_side), target.labels.cpu().numpy())
        self.shown.append(_Shown(pq["vitp"] - pq["proposer"], name, target.image_path, panels, pq))
        self.shown.sort(key=lambda s: s.delta)
        n = self.images_shown
        if len(self.shown) > 2 * n:  # keep the n most hurt and the n most helped
            self.shown = self.shown[:n] + self.shown[-n:]

    # ------------------------------------------------------------------ rendering
    def per_class(self) -> dict[str, dict[str, list[float | None]]]:
        out: dict[str, dict[str, list[float | None]]] = {}
        for variant, (iou, tp, fp, fn) in self.stats.items():
            tp_, fp_, fn_ = tp.double(), fp.double(), fn.double()
            denom = (tp_ + 0.5 * fp_ + 0.5 * fn_).clamp(min=1e-12)
            present = (tp + fp + fn) > 0
            values = {"pq": iou / denom * 100, "sq": torch.where(tp > 0, iou / tp_.clamp(min=1), 0.0) * 100,
                      "rq": tp_ / denom * 100}
            out[variant] = {m: [round(float(x), 2) if bool(p) else None for x, p in zip(v, present)]
                            for m, v in values.items()}
        return out

    def _figure(self, shown: _Shown) -> str:
        from vitp.data.io import load_rgb
        from vitp.visualize import figure, overlay_panoptic

        segs = shown.segments["ground truth"][0]
        if shown.image_path is not None and Path(shown.image_path).is_file():
            image = np.asarray(Image.fromarray(load_rgb(shown.image_path)).resize(segs.shape[::-1], Image.BILINEAR))
        else:
            image = np.full((*segs.shape, 3), 128, np.uint8)
        is_thing = np.asarray(self.info.is_thing, dtype=bool)
        panels = []
        for key, (seg, labels) in shown.segments.items():
            title = VARIANT_TITLES.get(key, key) + (f" PQ {shown.pq[key]:.1f}" if key in shown.pq else "")
            panels.append((title, overlay_panoptic(image, seg.astype(np.int64), labels, is_thing,
                                                   names=list(self.info.class_names))))
        buf = io.BytesIO()
        figure(panels, title_size=12).save(buf, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")

    def html(self, metrics: Mapping[str, Any] | None = None) -> str:
        names = self.info.class_names
        per_class = self.per_class()
        variants = [v for v in ("proposer", "vitp", "oracle") if v in per_class]
        head = "".join(f'<th data-k="{i + 2}">{VARIANT_TITLES[v]} {m.upper()}</th>'
                       for i, (v, m) in enumerate((v, m) for v in variants for m in ("pq", "sq", "rq")))
        rows = []
        for c, name in enumerate(names):
            cells = []
            for v in variants:
                for m in ("pq", "sq", "rq"):
                    x = per_class[v][m][c]
                    cells.append('<td data-v="-1">–</td>' if x is None else
                                 f'<td data-v="{x}"><div class="bar {v}" style="width:{max(0.0, min(100.0, x)):.1f}%">'
                                 f"</div><span>{x:.1f}</span></td>")
            kind = "thing" if self.info.is_thing[c] else "stuff"
            rows.append(f'<tr><td data-v="{html.escape(name)}">{html.escape(name)}</td><td data-v="{kind}">{kind}</td>'
                        + "".join(cells) + "</tr>")
        conf = self.confusion.double()
        share = conf / conf.sum(1, keepdim=True).clamp(min=1)
        conf_rows = "".join(
            f"<tr><th>{html.escape(names[i])}</th>" + "".join(
                f'<td style="background:rgba(40,90,200,{float(share[i, j]):.3f})" title="{float(share[i, j]) * 100:.1f}%">'
                f"{int(conf[i, j])}</td>" for j in range(self.k)) + "</tr>" for i in range(self.k))
        accuracy = float(conf.diag().sum() / conf.sum().clamp(min=1) * 100)
        helped = [s for s in reversed(self.shown) if s.delta > 0][: self.images_shown]
        hurt = [s for s in self.shown if s.delta < 0][: self.images_shown]

        def gallery(items: list[_Shown]) -> str:
            if not items:
                return "<p>none</p>"
            return "".join(f'<figure><img alt="{html.escape(s.name)}" src="{self._figure(s)}"><figcaption>'
                           f"{html.escape(s.name)}: PQ {s.pq['proposer']:.1f} → {s.pq['vitp']:.1f} "
                           f"({s.delta:+.1f})</figcaption></figure>" for s in items)

        summary = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{float(v):.2f}</td></tr>"
                          for k, v in (metrics or {}).items() if isinstance(v, (int, float)) and math.isfinite(v))
        return _PAGE.format(head=head, rows="".join(rows), conf_head="".join(f"<th>{html.escape(n)}</th>" for n in names),
                            conf_rows=conf_rows, accuracy=accuracy, points=int(conf.sum()),
                            helped=gallery(helped), hurt=gallery(hurt), summary=summary,
                            # script text is not HTML-decoded: JSON as is, only "</" escaped
                            data=json.dumps({"classes": list(names), "variants": variants}).replace("</", "<\\/"))

    def write(self, out_dir: str | Path, metrics: Mapping[str, Any] | None = None) -> Path:
        path = Path(out_dir) / "report.html"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.html(metrics), encoding="utf-8")
        return path


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>vitp evaluation report</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 24px; color: #222; }}
table {{ border-collapse: collapse; margin: 8px 0 24px; }}
th, td {{ border: 1px solid #ddd; padding: 3px 6px; text-align: right; }}
#classes th {{ cursor: pointer; background: #f3f3f3; position: sticky; top: 0; }}
#classes td {{ position: relative; min-width: 70px; }}
#classes td:first-child, #classes td:nth-child(2) {{ text-align: left; }}
.bar {{ position: absolute; left: 0; top: 2px; bottom: 2px; opacity: .35; }}
.bar.proposer {{ background: #999; }} .bar.vitp {{ background: #2a7; }} .bar.oracle {{ background: #37c; }}
td span {{ position: relative; }}
#confusion td {{ min-width: 28px; text-align: center; }}
figure {{ display: inline-block; margin: 8px; }} figcaption {{ font-size: 12px; }}
</style></head><body>
<h1>Evaluation report</h1>
<table id="summary">{summary}</table>
<h2>Per-class PQ / SQ / RQ</h2><p>Click a column header to sort.</p>
<table id="classes"><thead><tr><th data-k="0">class</th><th data-k="1">kind</th>{head}</tr></thead>
<tbody>{rows}</tbody></table>
<h2>Point classifier: confusion matrix</h2>
<p>{points} supervision points, accuracy {accuracy:.1f} %. Rows: true class; columns: predicted.</p>
<table id="confusion"><tr><th></th>{conf_head}</tr>{conf_rows}</table>
<h2>Where ViT-P helped most</h2><div id="helped">{helped}</div>
<h2>Where ViT-P hurt most</h2><div id="hurt">{hurt}</div>
<script type="application/json" id="report-data">{data}</script>
<script>
(function () {{
  var table = document.getElementById("classes");
  var body = table.tBodies[0];
  var dir = {{}};
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, k) {{
    th.addEventListener("click", function () {{
      dir[k] = -(dir[k] || 1);
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {{
        var x = a.cells[k].getAttribute("data-v"), y = b.cells[k].getAttribute("data-v");
        var nx = parseFloat(x), ny = parseFloat(y);
        var c = (isNaN(nx) || isNaN(ny)) ? String(x).localeCompare(String(y)) : nx - ny;
        return dir[k] * c;
      }});
      rows.forEach(function (r) {{ body.appendChild(r); }});
    }});
  }});
  document.body.setAttribute("data-ready", JSON.parse(document.getElementById("report-data").textContent).classes.length);
}})();
</script></body></html>
"""
