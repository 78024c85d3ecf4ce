"""A non-finite training loss stops the run with an error naming where, or (``skip``) skips the step."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from test_module import tiny_module
from vitp.nonfinite import NonFiniteLossError
from vitp.settings import OptimizerSettings
from vitp.structures import Batch, Target


def point_batch(nan: bool = False) -> Batch:
    """Two 32x32 images with 4 labelled points each; ``nan``: every point ignored (label -1), so the
    mean cross-entropy is 0/0 = NaN, as for a batch without a single labelled point."""
    gen = torch.Generator().manual_seed(0)
    targets = [Target(masks=torch.ones(1, 32, 32, dtype=torch.bool), labels=torch.tensor([0]),
                      is_crowd=torch.tensor([False]), segments=torch.zeros(32, 32, dtype=torch.long), image_id=i,
                      file_name=f"{i}.jpg", orig_size=(32, 32), valid_size=(32, 32)) for i in range(2)]
    labels = torch.full((2, 4), -1) if nan else torch.randint(0, 3, (2, 4), generator=gen)
    return Batch(torch.randn(2, 3, 32, 32, generator=gen), targets, torch.rand(2, 4, 2, generator=gen) * 2 - 1, labels)


def fit(module, batches: list[Batch], **trainer_kwargs) -> L.Trainer:
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        **trainer_kwargs)
    trainer.fit(module, DataLoader(batches, batch_size=None, collate_fn=lambda b: b))
    return trainer


def test_nonfinite_loss_stops_naming_step_epoch_batch_and_term():
    module = tiny_module(optimization=OptimizerSettings(lr=1e-3))
    with pytest.raises(NonFiniteLossError) as err:
        fit(module, [point_batch(), point_batch(nan=True)])
    message = str(err.value)
    for part in ("global step 1", "epoch 0", "batch 1", "point_ce=nan", "on_nonfinite_loss=skip"):
        assert part in message, message


@pytest.mark.parametrize("clip", [None, 1.0])
def test_skip_leaves_parameters_unchanged_and_counts(clip):
    module = tiny_module(optimization=OptimizerSettings(lr=1e-3, on_nonfinite_loss="skip"))
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.warns(RuntimeWarning, match="skipping the optimizer step: non-finite training loss at global step 1"):
        trainer = fit(module, [point_batch(nan=True)] * 2, gradient_clip_val=clip)
    assert module.skipped_nonfinite == 2
    assert float(trainer.callback_metrics["train/skipped_nonfinite"]) == 2.0
    after = module.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, changed
    # the same run with a finite batch does change the weights (the comparison above can fail)
    trainer = fit(module, [point_batch()], gradient_clip_val=clip)
    assert any(not torch.equal(before[k], v) for k, v in module.state_dict().items())
    assert float(trainer.callback_metrics["train/skipped_nonfinite"]) == 2.0
