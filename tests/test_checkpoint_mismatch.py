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


# ---------------------------------------------------------------- one switch for every part's weights
def test_one_switch_for_the_classifiers_own_checkpoint(three_class_ckpt):
    """The classifier's ``checkpoint_path`` trained on 3 classes, data with 4: refused with the module's
    option named; with it, the head starts afresh and everything else is the checkpoint's."""
    path, saved = three_class_ckpt

    def with_checkpoint(**kwargs) -> dict:
        p = parts(**kwargs)
        p["classifier"].checkpoint_path = str(path)
        return p

    with pytest.raises(RuntimeError, match="reinit_heads_on_mismatch"):
        ViTPModule(**with_checkpoint())
    module = ViTPModule(**with_checkpoint(reinit_heads_on_mismatch=True))
    assert module.classifier.load_report.reinitialized == ["head.weight", "head.bias"]
    assert module.classifier.head.weight.shape == (4, 32)
    state = module.state_dict()
    for key in [k for k in saved if k.startswith("classifier.backbone.")]:
        assert torch.equal(state[key], saved[key]), key


def test_one_switch_for_a_pretrained_proposer(tmp_path: Path):
    """A pretrained proposer whose 3 classes nothing maps onto the data's 4: the module refuses with
    the option named; with it, the proposer gets a fresh 4 + 1 class head and keeps its other weights."""
    from vitp.proposers import Mask2FormerProposer

    Mask2FormerProposer(preset="tiny", class_names=["x", "y", "z"]).save_pretrained(tmp_path / "m")

    def module(**kwargs) -> ViTPModule:
        proposer = Mask2FormerProposer(model=str(tmp_path / "m"), num_classes=4)
        return ViTPModule(proposer=proposer, classifier=None, dataset_info=INFO4, **kwargs)

    with pytest.raises(ValueError, match="predicts 3 classes, the dataset has 4.*reinit_heads_on_mismatch"):
        module()
    with pytest.warns(UserWarning, match="fresh class head"):
        fitted = module(reinit_heads_on_mismatch=True)
    assert fitted.proposer.head_mismatch is None and fitted.proposer.hf.config.num_labels == 4
    saved = Mask2FormerProposer(model=str(tmp_path / "m")).state_dict()
    kept = [k for k, v in fitted.proposer.state_dict().items() if k in saved and v.shape == saved[k].shape]
    assert len(kept) > 0.9 * len(saved)
    assert all(torch.equal(fitted.proposer.state_dict()[k], saved[k]) for k in kept if "class_predictor" not in k)
    images = torch.randn(1, 3, 64, 64)
    assert fitted.proposer.eval()(images).class_logits.shape[-1] == 5


def test_old_per_part_switches_are_reported():
    from vitp.settings import renamed_options

    model = {"init_args": {"classifier": {"init_args": {"reinit_head": False}},
                           "proposer": {"init_args": {"reinit_head": True}}}}
    found = renamed_options(model)
    assert len(found) == 2 and all("reinit_heads_on_mismatch" in f for f in found)
