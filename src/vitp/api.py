"""``vitp.Segmenter``: segment images from Python, the way ``vitp predict`` does.

    from vitp import Segmenter
    seg = Segmenter.from_checkpoint("outputs/synthetic/vitp_tiny_mask2former/checkpoints/last.ckpt",
                                    config="configs/synthetic/vitp/tiny_mask2former.yaml")
    result = seg("photo.jpg")            # a path, PIL image, numpy array or tensor; or a list of them
    result.segments                      # [{"id", "label", "score", "area", "bbox", ...}] (panoptic)
    result.panoptic                      # int64[H, W] segment ids (0 = void), as in the exported PNG
    result.semantic                      # int64[H, W] class indices (names: seg.class_names)
    result.instances                     # [{"label", "score", "mask": bool[H, W], ...}]
    result.overlay()                     # PIL image: coloured segments, outlines, class names
    seg.save_pretrained("my_model")      # one shareable folder; Segmenter.from_pretrained("my_model")

There is one inference path: images become samples exactly as ``vitp predict`` makes them
(``vitp.data.folder.user_sample``: EXIF orientation, colour modes, resize), the data module's
collate pads them, and ``ViTPModule.predict_batch`` runs the ``TwoStagePipeline`` and its
post-processing; the per-image records are the JSON that ``vitp predict`` writes
(``vitp.export.image_record``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from vitp.data.folder import load_user_image, to_rgb_array, user_sample
from vitp.data.transforms import EvalTransform
from vitp.structures import DatasetInfo, InstancePrediction, PanopticPrediction, Prediction, Variant


@dataclass
class SegmentationResult:
    """One image's result (at the image's own size, EXIF orientation applied).

    image: the RGB input ``uint8[H, W, 3]``.
    semantic: ``int64[H, W]`` contiguous class indices (None if the task was not run).
    panoptic: ``int64[H, W]`` segment ids, 0 = void (None if the task was not run).
    segments: the panoptic segments: ``id`` (as in ``panoptic``), ``label`` (class name),
        ``category_id``, ``isthing``, ``score``, ``area``, ``bbox`` ``[x, y, w, h]``.
    instances: ``label``, ``category_id``, ``score``, ``area``, ``bbox``, ``segmentation`` (COCO
        RLE) and ``mask`` (``bool[H, W]``, built when read: :class:`InstanceRecord`).
    record: the JSON that ``vitp predict`` writes for this image (``segments/<stem>.json``).
    prediction: the raw ``vitp.structures.Prediction``.
    """

    image: np.ndarray
    semantic: np.ndarray | None
    panoptic: np.ndarray | None
    segments: list[dict[str, Any]]
    instances: list[dict[str, Any]]
    record: dict[str, Any]
    prediction: Prediction
    dataset_info: DatasetInfo = field(repr=False)

    def overlay(self, kind: str = "panoptic", scores: bool = True, legend: bool = True) -> Image.Image:
        """The prediction drawn on the image (``panoptic`` or ``semantic``), as ``vitp predict``
        writes it under ``overlays/``, with a legend (colour, class name, score) on the right."""
        from vitp.visualize import render_prediction

        return Image.fromarray(render_prediction(self.image, self.prediction, self.dataset_info, kind,
                                                 scores=scores, legend=legend))


class Segmenter:
    """A trained ViT-P model (``ViTPModule``) wrapped for plain images.

    Build it with :meth:`from_checkpoint` (a training YAML config + its checkpoint, as for
    ``vitp predict``) or :meth:`from_cli` / directly from a module. Call it with one image or a
    list (paths, PIL images, numpy arrays ``[H, W(, C)]``, tensors ``[C, H, W]``); one image gives
    one :class:`SegmentationResult`, a list gives a list.

    Args:
        module: a ``vitp.module.ViTPModule`` (put in eval mode here).
        image_size, mean, std: the data module's evaluation transform (long side resized).
        collate: the data module's collate (``SegmentationDataModule.collate()``): same padding.
        batch_size: images per forward pass.
        device: where the model runs (default: the module's device).
        score_threshold: keep only panoptic segments and instances scoring at least this (None: the
            module's ``score_threshold``, 0 by default: keep all).
        max_image_side: images whose long side is larger are post-processed at this size and the
            results mapped back to the image's size (``"config"``: the module's ``max_image_side``,
            1333 by default; None: always the full size, memory still bounded by band-wise
            post-processing, see ``vitp.postprocess``).
    """

    def __init__(self, module: Any, image_size: int, mean: Sequence[float], std: Sequence[float],
                 collate: Any, batch_size: int = 4, device: str | torch.device | None = None,
                 score_threshold: float | None = None, max_image_side: int | None | str = "config") -> None:
        self.module = module.eval()
        if device is not None:
            self.module.to(device)
        self.transform = EvalTransform(image_size, tuple(mean), tuple(std))
        self.collate = collate
        self.batch_size = batch_size
        self.score_threshold = score_threshold
        self.max_image_side = max_image_side
        self.dataset_info: DatasetInfo = module.dataset_info
        self.datamodule: Any = None  # set by from_datamodule / from_cli / from_checkpoint
        self.config: dict[str, Any] | None = None  # the parsed config (from_cli): what save_pretrained writes
        self.training: dict[str, Any] = {}  # training data and metrics as recorded (model card)

    @property
    def device(self) -> torch.device:
        return next(iter(self.module.parameters())).device

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.dataset_info.class_names

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_datamodule(cls, module: Any, datamodule: Any, **kwargs: Any) -> "Segmenter":
        """A segmenter with ``datamodule``'s evaluation transform and collate."""
        kwargs.setdefault("batch_size", getattr(datamodule, "eval_batch_size", 4))
        seg = cls(module, datamodule.image_size, datamodule.mean, datamodule.std, datamodule.collate(), **kwargs)
        seg.datamodule = datamodule
        return seg

    @classmethod
    def from_cli(cls, cli: Any, **kwargs: Any) -> "Segmenter":
        """From a ``vitp.cli.cli(args, run=False)`` (its model and data module)."""
        from vitp.cli_hooks import config_to_dict

        seg = cls.from_datamodule(cli.model, cli.datamodule, **kwargs)
        seg.config = config_to_dict(cli.config)
        return seg

    @classmethod
    def from_checkpoint(cls, ckpt_path: str | os.PathLike, config: str | os.PathLike | Sequence[str],
                        overrides: Sequence[str] = (), device: str | torch.device = "cpu",
                        **kwargs: Any) -> "Segmenter":
        """The model that ``vitp predict --config CONFIG --ckpt_path CKPT`` runs.

        ``config``: the training YAML (or several, applied in order); it says how to build the
        proposer (e.g. where its saved weights are: a relative path missing from the working
        directory is looked up next to the checkpoint, then the config file, and their parents) and
        the classifier; its data section gives the evaluation transform. The label space is the
        checkpoint's when it stores one (no dataset needed), else the data section's.
        ``overrides``: more ``vitp`` arguments (``["--data.init_args.root", "/data/coco"]``).
        The checkpoint's ``state_dict`` is then loaded strictly (class-sized layers that do not fit
        the label space are an error, never re-initialised: see ``vitp.checkpoint_heads``); a
        missing, truncated or corrupt checkpoint is an error naming the file.
        """
        from vitp.checkpoint_heads import TRAINING_KEY, read_checkpoint, reconcile_head_shapes
        from vitp.cli import cli as build_cli
        from vitp.pretrained import checkpoint_overrides, quiet_lightning

        configs = [config] if isinstance(config, (str, os.PathLike)) else list(config)
        checkpoint = read_checkpoint(ckpt_path)  # errors name the file
        args: list[str] = []
        for c in configs:
            args += ["--config", str(c)]
        args += ["--trainer.logger", "false", "--trainer.accelerator", "cpu",
                 *checkpoint_overrides(configs, ckpt_path, checkpoint, overrides), *overrides]
        with quiet_lightning():
            built = build_cli(args, run=False)
        state = checkpoint.get("state_dict", checkpoint)
        # class-count check (vitp.checkpoint_heads); heads are never re-initialised for inference
        reconcile_head_shapes(built.model, state, built.model.dataset_info.num_classes, reinit=False, fitting=False)
        built.model.load_state_dict(state, strict=True)
        seg = cls.from_cli(built, device=device, **kwargs)
        seg.training = dict(checkpoint.get(TRAINING_KEY) or {})
        return seg

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, device: str | torch.device = "cpu",
                        revision: str | None = None, **kwargs: Any) -> "Segmenter":
        """A model saved by :meth:`save_pretrained` (or ``vitp fit --export_pretrained DIR``): a
        folder, or a Hugging Face hub id holding one (``huggingface_hub.snapshot_download``). Needs
        no dataset and no particular working directory (see ``vitp.pretrained``)."""
        from vitp.pretrained import load_pretrained

        return load_pretrained(source, device=str(device), revision=revision, **kwargs)

    def save_pretrained(self, directory: str | os.PathLike, metrics: dict[str, float] | None = None,
                        training: dict[str, Any] | None = None) -> Path:
        """Write this model as one shareable folder (config, label space, safetensors weights,
        model card; see ``vitp.pretrained``). ``metrics`` / ``training``: what the model card
        reports (default: as recorded in the checkpoint or the pretrained folder)."""
        from vitp.pretrained import save_pretrained

        if self.config is None or self.datamodule is None:
            raise ValueError("save_pretrained needs the model's config: build the Segmenter with from_checkpoint, "
                             "from_cli or from_pretrained")
        return save_pretrained(self.module, self.datamodule, self.config, directory, metrics,
                               training if training is not None else self.training)

    def push_to_hub(self, repo_id: str, token: str | None = None, private: bool | None = None) -> str:
        """:meth:`save_pretrained` into a temporary folder and upload it to the Hugging Face hub."""
        import tempfile

        from vitp.pretrained import push_to_hub

        with tempfile.TemporaryDirectory() as tmp:
            return push_to_hub(self.save_pretrained(tmp), repo_id, token=token, private=private)

    # ------------------------------------------------------------------ inference
    @staticmethod
    def _read(images: Sequence[Any]) -> list[tuple[np.ndarray, str, str | None]]:
        """``(RGB array, file name, path)`` of each input (files read as ``vitp predict`` reads them)."""
        out = []
        for i, image in enumerate(images):
            if isinstance(image, (str, os.PathLike)):
                path = Path(image)
                out.append((load_user_image(path), path.name, str(path)))
            else:
                out.append((to_rgb_array(image), f"image_{i}.png", None))
        return out

    def predict(self, images: Sequence[Any], variants: Sequence[Variant] | None = None) -> list[dict[Variant, Prediction]]:
        """Raw predictions per image: variant name -> ``Prediction`` (default: the main variant;
        ``("vitp", "proposer")`` also gives the proposer alone, from the same proposals)."""
        return [p for _, p in self._run(self._read(images), variants)]

    def _run(self, inputs: list[tuple[np.ndarray, str, str | None]], variants: Sequence[Variant] | None = None
             ) -> list[tuple[np.ndarray, dict[Variant, Prediction]]]:
        variants = tuple(variants or (self.module.main_variant,))
        out = []
        with torch.inference_mode():
            for start in range(0, len(inputs), self.batch_size):
                chunk = inputs[start:start + self.batch_size]
                batch = self.collate([user_sample(a, self.transform, name, path) for a, name, path in chunk])
                batch = batch.to(self.device)
                preds = self.module.predict_batch(batch, self.score_threshold, self.max_image_side, variants)
                out += [(a, {name: _cpu(p[i]) for name, p in preds.items()}) for i, (a, _, _) in enumerate(chunk)]
        return out

    def __call__(self, images: Any) -> SegmentationResult | list[SegmentationResult]:
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        results = [self._result(a, p[self.module.main_variant]) for a, p in self._run(self._read(items))]
        return results[0] if single else results

    def _result(self, image: np.ndarray, pred: Prediction) -> SegmentationResult:
        from vitp.export import image_record

        ids, record = image_record(pred, self.dataset_info)
        inst = pred.instance
        instances = [] if inst is None else [InstanceRecord(r, inst, i) for i, r in enumerate(record["instances"])]
        return SegmentationResult(
            image=image,
            semantic=None if pred.semantic is None else pred.semantic.long().numpy(),
            panoptic=ids, segments=record.get("panoptic", []), instances=instances, record=record,
            prediction=pred, dataset_info=self.dataset_info,
        )


class InstanceRecord(Mapping[str, Any]):
    """One entry of ``SegmentationResult.instances``: the instance's JSON fields (``label``,
    ``category_id``, ``score``, ``area``, ``bbox``, ``segmentation``) and ``"mask"``, its
    ``bool[H, W]`` mask at the image size, built when read (``InstancePrediction.mask``) and not
    kept: 100 instances of a 48-MP photo would otherwise hold 4.8 GB of masks."""

    def __init__(self, fields: dict[str, Any], instances: InstancePrediction, index: int) -> None:
        self._fields = fields
        self._instances = instances
        self._index = index

    def __getitem__(self, key: str) -> Any:
        if key == "mask":
            return self._instances.mask(self._index).numpy()
        return self._fields[key]

    def __iter__(self) -> Iterator[str]:
        yield from self._fields
        yield "mask"

    def __len__(self) -> int:
        return len(self._fields) + 1

    def __repr__(self) -> str:
        h, w = self._instances.size
        return f"InstanceRecord({self._fields!r}, mask=bool[{h}, {w}])"


def _cpu(pred: Prediction) -> Prediction:
    pan, inst = pred.panoptic, pred.instance
    return Prediction(
        semantic=None if pred.semantic is None else pred.semantic.cpu(),
        panoptic=None if pan is None else PanopticPrediction(pan.segments.cpu(), pan.labels.cpu(), pan.scores.cpu()),
        instance=None if inst is None else replace(inst, masks=inst.masks.cpu(), labels=inst.labels.cpu(),
                                                   scores=inst.scores.cpu()),
    )
