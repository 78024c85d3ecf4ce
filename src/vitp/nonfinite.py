"""Non-finite training losses: a clear error saying where and which term, or a skipped step.

``ViTPModule(optimization=OptimizerSettings(on_nonfinite_loss=...))``: ``"stop"`` raises :class:`NonFiniteLossError`; ``"skip"``
makes ``training_step`` return None, which Lightning's automatic optimisation treats as "no
backward for this batch" (checked for Lightning 2.6): the closure still zeroes the gradients
(``set_to_none``), so gradient clipping sees no gradients and the optimizer leaves every parameter
as it was (torch optimizers skip parameters whose ``grad`` is None; the AMP ``GradScaler`` path
skips ``scaler.step``). The global step and a step-interval LR schedule still advance. Lightning
refuses a None ``training_step`` output when ``world_size > 1``, so ``"skip"`` is single-process only.
"""

from __future__ import annotations

from typing import Any

import torch


class NonFiniteLossError(FloatingPointError):
    """A training loss is NaN or infinite (``on_nonfinite_loss="stop"``)."""


def nonfinite_message(module: Any, batch_idx: int, losses: dict[str, torch.Tensor]) -> str:
    """Where (global step, epoch, batch index) and which loss terms are non-finite."""
    terms = {name: float(value.detach()) for name, value in losses.items()}
    bad = [name for name, value in terms.items() if not torch.isfinite(torch.tensor(value))]
    shown = ", ".join(f"{name}={terms[name]}" for name in bad) or "the sum of finite terms overflowed"
    return (f"non-finite training loss at global step {module.global_step}, epoch {module.current_epoch}, "
            f"batch {batch_idx}: {shown} (all terms: {terms})")


def check_skip_supported(policy: str, world_size: int) -> None:
    """``"skip"`` relies on Lightning skipping a None ``training_step`` output: one process only."""
    if policy == "skip" and world_size > 1:
        raise ValueError("on_nonfinite_loss='skip' is not supported with several processes (Lightning refuses a "
                         "None training_step output when world_size > 1); use 'stop'")
