"""The model card (``README.md``) of a pretrained folder (``vitp.pretrained.save_pretrained``).

It says only what was recorded: the label space, the architecture named by the config, the
training data and the metrics the run logged (``val/`` after its last validation, ``test/`` when
tested); "not recorded" where nothing was.
"""

from __future__ import annotations

from typing import Any


def _class_name(section: dict[str, Any] | None) -> str:
    return "none" if not section else str(section.get("class_path", "?")).rsplit(".", 1)[-1]


def model_card(module: Any, model: dict[str, Any], data_args: dict[str, Any], training: dict[str, Any]) -> str:
    """Markdown text of the card."""
    info = module.dataset_info
    init = model.get("init_args", {})
    classifier = init.get("classifier")
    lines = [
        "---",
        "library_name: vitp",
        "tags: [image-segmentation, panoptic-segmentation, vitp]",
        "---",
        "",
        f"# vitp model: {_class_name(init.get('proposer'))} + {_class_name(classifier)}",
        "",
        "A ViT-P segmentation model (mask proposer + point classifier) saved by vitp.",
        "",
        "```python",
        "from vitp import Segmenter",
        'seg = Segmenter.from_pretrained("path/to/this/folder")   # or a Hugging Face hub id',
        'result = seg("photo.jpg")   # result.segments, result.semantic, result.instances, result.overlay()',
        "```",
        "",
        "## Model",
        "",
        f"- proposer: `{init.get('proposer', {}).get('class_path')}`",
        f"- classifier: `{classifier.get('class_path') if classifier else None}`"
        + (f" (`{classifier.get('init_args', {}).get('model_name')}`)" if classifier else ""),
        f"- parameters: {sum(p.numel() for p in module.parameters()):,}",
        f"- input: long side resized to {data_args['image_size']} px, mean {data_args['mean']}, std {data_args['std']}",
        f"- tasks: {', '.join(module.tasks)}",
        "",
        f"## Label space ({info.num_classes} classes)",
        "",
        "| id | name | kind |",
        "|---:|---|---|",
        *[f"| {c} | {n} | {'thing' if t else 'stuff'} |" for c, n, t in
          zip(info.category_ids, info.class_names, info.is_thing)],
        "",
        "## Training data",
        "",
    ]
    data = training.get("data")
    if data:
        where = data.get("root", "?")
        kind = " (vitp's generated dataset, `vitp-generate`)" if data.get("generated") else ""
        lines.append(f"`{data.get('class_path')}` at `{where}`{kind}; "
                     f"{training.get('epoch', '?')} epoch(s), {training.get('global_step', '?')} step(s) recorded.")
    else:
        lines.append("Not recorded.")
    lines += ["", "## Metrics", ""]
    metrics = training.get("metrics") or {}
    if metrics:
        lines += ["Measured by the run (the last logged values; `val/` on the validation split):", "",
                  "| metric | value |", "|---|---:|"]
        lines += [f"| {k} | {'-' if v is None else f'{v:.4g}'} |" for k, v in sorted(metrics.items())]
    else:
        lines.append("None recorded.")
    lines += ["", "## Files", "",
              "`vitp_config.yaml` (model config, paths relative to this folder), `label_space.json`, "
              "`classifier.safetensors`, `proposer/` or `proposer.safetensors`, `vitp_pretrained.json`.", ""]
    return "\n".join(lines)
