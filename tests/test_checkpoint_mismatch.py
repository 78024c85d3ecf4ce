"""A checkpoint trained on another label space: a clear error, or (opt-in) fresh heads."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from test_module import INFO
from test_nonfinite import fit, point_batch
from vitp.settings import OptimizerSettings
from vitp.checkpoint_heads import reconcile_head_shapes
from vitp.classifiers import PointViT
from vitp.module import ViTPModule
from vitp.proposers import OracleProposer
from vitp.structures import DatasetInfo

INFO4 = DatasetInfo(("a", "b", "c", "d"), (1, 5, 9, 11), (True, True, False, False))


def parts(info: DatasetInfo = INFO4, **kwargs) -> dict:
    clf = PointViT(model_name="vit_tiny_patch16_224", image_size=32,
                   model_kwargs={"depth": 3, "embed_dim": 32, "num_heads": 2, "img_size": 32})
    return {"proposer": OracleProposer(class_agnostic=True), "classifier": clf, "dataset_info": info, **kwargs}


@pytest.fixture(scope="module")
def three_class_ckpt(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A Lightning checkpoint (optimizer state included) of a 3-class module after one step."""
    module = ViTPModule(**parts(INFO, optimization=OptimizerSettings(lr=1e-3)))
    trainer = fit(module, [point_batch()])
    path = tmp_path_factory.mktemp("ckpt") / "three.ckpt"
    trainer.save_checkpoint(path)
    return path, {k: v.clone() for k, v in module.state_dict().items()}


def test_class_count_mismatch_names_parameters_shapes_and_the_option(three_class_ckpt):
    path, _ = three_class_ckpt
    with pytest.raises(ValueError) as err:
        ViTPModule.load_from_checkpoint(path, map_location="cpu", **parts())
    message = str(err.value)
    for part in ("classifier.head.weight: checkpoint [3, 32], model [4, 32]", "classifier.head.bias: checkpoint [3], "
                 "model [4]", "has 4 classes", "--model.init_args.reinit_heads_on_mismatch true"):
        assert part in message, message


def test_reinit_keeps_fresh_head_and_loads_the_rest(three_class_ckpt):
    path, saved = three_class_ckpt
    torch.manual_seed(1)
    fresh = ViTPModule(**parts(reinit_heads_on_mismatch=True)).state_dict()
    torch.manual_seed(1)
    with pytest.warns(UserWarning, match="classifier.head.weight, classifier.head.bias"):
        loaded = ViTPModule.load_from_checkpoint(path, map_location="cpu", **parts(reinit_heads_on_mismatch=True))
    state = loaded.state_dict()
    for key in ("classifier.head.weight", "classifier.head.bias"):
        assert torch.equal(state[key], fresh[key]), key
    others = [k for k in state if not k.startswith("classifier.head.")]
    assert others and all(torch.equal(state[k], saved[k]) for k in others)
    assert not torch.equal(state["classifier.point_embed.weight"], fresh["classifier.point_embed.weight"])


def test_reinit_refuses_to_resume_a_fit(three_class_ckpt):
    path, _ = three_class_ckpt
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="resumes the optimizer too"):
        trainer.fit(ViTPModule(**parts(optimization=OptimizerSettings(lr=1e-3), reinit_heads_on_mismatch=True)),
                    DataLoader([point_batch()], batch_size=None, collate_fn=lambda b: b), ckpt_path=path)


def test_architecture_mismatch_is_not_rescued_by_reinit():
    module = ViTPModule(**parts(reinit_heads_on_mismatch=True))
    state = {k: v.clone() for k, v in module.state_dict().items()}
    state["classifier.point_embed.weight"] = torch.zeros(5, 5)
    with pytest.raises(ValueError, match="another architecture") as err:
        reconcile_head_shapes(module, state, INFO4.num_classes, reinit=True)
    assert "classifier.point_embed.weight: checkpoint [5, 5]" in str(err.value)
    state = {k: v.clone() for k, v in module.state_dict().items()}
    assert reconcile_head_shapes(module, state, INFO4.num_classes, reinit=False) == []
