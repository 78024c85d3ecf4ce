"""HF Mask2Former / OneFormer proposers on tiny random-initialised models (offline, CPU)."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
import torch

import vitp.proposers
from vitp.proposers import MaskProposer, OracleProposer
from vitp.proposers.hf_build import HashTokenizer
from vitp.proposers.hf_targets import global_num_masks, targets_to_hf
from vitp.proposers.label_space import (
    LabelSpaceMapper,
    agnostic_logits,
    build_label_mapping,
    normalize_class_name,
)
from vitp.proposers.mask2former import Mask2FormerProposer
from vitp.proposers.oneformer import OneFormerProposer
from vitp.structures import Target

PROPOSERS = {"mask2former": Mask2FormerProposer, "oneformer": OneFormerProposer}
SIZE = 128
K = 4


def make_target(n: int, size: int = SIZE, labels=None, crowd=None, valid=None) -> Target:
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    for i in range(n):
        masks[i, 20 * i : 20 * i + 40, 10 + 10 * i : 90] = True
    labels = torch.arange(n) % K if labels is None else torch.as_tensor(labels)
    crowd = torch.zeros(n, dtype=torch.bool) if crowd is None else torch.as_tensor(crowd)
    return Target(
        masks=masks,
        labels=labels.long(),
        is_crowd=crowd.bool(),
        segments=torch.full((size, size), -1, dtype=torch.long),
        image_id=0,
        file_name="x.png",
        orig_size=(size, size),
        valid_size=valid or (size, size - 16),
    )


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, SIZE, SIZE, generator=g)


@pytest.fixture(scope="module")
def targets():
    return [make_target(3), make_target(2)]


# ------------------------------------------------------------------------------------ shapes
@pytest.mark.parametrize("name", list(PROPOSERS))
def test_public_path_and_declared_facts(name):
    """The classes configs name, and the facts every proposer declares (see ``MaskProposer``)."""
    cls = PROPOSERS[name]
    assert getattr(vitp.proposers, cls.__name__) is cls
    p = cls(preset="tiny", num_classes=K)
    assert isinstance(p, MaskProposer) and p.num_classes == K
    assert (p.class_agnostic, p.task_conditioned, p.needs_targets, p.trainable) == \
        (False, name == "oneformer", False, True)
    a = cls(preset="tiny", class_agnostic=True, freeze="all")
    assert a.class_agnostic and a.num_classes is None and not a.trainable


def test_oracle_declared_facts():
    o = OracleProposer(num_classes=K, class_agnostic=True)
    assert (o.class_agnostic, o.task_conditioned, o.needs_targets, o.trainable) == (True, False, True, False)
    assert not OracleProposer(num_classes=K).class_agnostic


@pytest.mark.parametrize("name", list(PROPOSERS))
def test_shapes_all_tasks(name, images, targets):
    p = PROPOSERS[name](preset="tiny", num_classes=K).eval()
    q = p.num_queries
    outs = {}
    with torch.no_grad():
        for task in ("semantic", "instance", "panoptic"):
            pr = p(images, task=task, targets=targets)
            assert pr.mask_logits.shape == (2, q, SIZE // 4, SIZE // 4)
            assert pr.class_logits.shape == (2, q, K + 1)
            assert torch.isfinite(pr.mask_logits).all() and torch.isfinite(pr.class_logits).all()
            assert pr.tasks == (task, task)
            outs[task] = pr.class_logits
    assert p.task_conditioned == (name == "oneformer")
    if name == "oneformer":  # task-conditioned
        assert not torch.allclose(outs["semantic"], outs["panoptic"])
    else:
        assert torch.equal(outs["semantic"], outs["panoptic"])
    with pytest.raises(ValueError):
        p(images, task="depth")


# ------------------------------------------------------------------------------------ saving
@pytest.mark.parametrize("name", list(PROPOSERS))
def test_save_pretrained_round_trip(name, images, tmp_path):
    names = ["person", "wall-other-merged", "car", "sky"]
    p = PROPOSERS[name](preset="tiny", class_names=names).eval()
    p.save_pretrained(tmp_path / "m")
    q = PROPOSERS[name](model=str(tmp_path / "m"), class_names=names).eval()
    assert q.mapper is None and q.proposer_class_names == names
    with torch.no_grad():
        for task in ("semantic", "panoptic"):
            a, b = p(images, task), q(images, task)
            assert torch.equal(a.mask_logits, b.mask_logits)
            assert torch.equal(a.class_logits, b.class_logits)


def test_oneformer_pretrained_without_tokenizer_fails(tmp_path):
    p = OneFormerProposer(preset="tiny", num_classes=K)
    p.hf.save_pretrained(tmp_path / "raw")  # no vitp metadata, no tokenizer: looks "pretrained"
    with pytest.raises(RuntimeError, match="tokenizer"):
        OneFormerProposer(model=str(tmp_path / "raw"))


def _word_level_tokenizer(directory) -> None:
    """A tiny offline HF tokenizer (WordLevel) saved like a hub repo's tokenizer files."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = "the task is semantic instance panoptic a an photo with".split()
    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]").save_pretrained(directory)


def test_oneformer_hf_tokenizer_round_trip(images, targets, tmp_path):
    _word_level_tokenizer(tmp_path / "tok")
    p = OneFormerProposer(
        preset="tiny", num_classes=K, tokenizer=str(tmp_path / "tok"), config_overrides={"is_training": True}
    ).eval()
    assert p.tokenizer.kind == "hf"
    assert p.task_token_ids[0, :4].tolist() == [2, 3, 4, 5] and p.task_token_ids[0, 4:].eq(0).all()
    p.save_pretrained(tmp_path / "m")
    q = OneFormerProposer(model=str(tmp_path / "m")).eval()  # tokenizer found next to the weights
    assert q.tokenizer.kind == "hf" and torch.equal(p.task_token_ids, q.task_token_ids)
    with torch.no_grad():
        assert torch.equal(p(images, "instance").class_logits, q(images, "instance").class_logits)
    q.train()
    out = q.loss(q(images, "panoptic", targets), targets)
    assert torch.isfinite(out["loss_contrastive"])


def test_hash_tokenizer():
    ids = HashTokenizer(512).encode(["the task is semantic", "the task is panoptic"], 16)
    assert ids.shape == (2, 16) and ids.max() == 511 and (ids[:, 0] == 510).all()
    assert ids[0, 1:4].tolist() == ids[1, 1:4].tolist() and ids[0, 4] != ids[1, 4]
    assert (ids.argmax(-1) == 5).all()  # eos is the pooled token


# ------------------------------------------------------------------------------------ training
@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("mask2former", {}),
        ("oneformer", {"train_task": "given"}),
        ("oneformer", {"config_overrides": {"is_training": True}}),  # text encoder + contrastive
    ],
)
def test_optimisation_lowers_loss(name, kwargs, images, targets):
    p = PROPOSERS[name](preset="tiny", num_classes=K, **kwargs).train()
    opt = torch.optim.AdamW([x for x in p.parameters() if x.requires_grad], lr=2e-3)
    losses = []
    for step in range(12):
        torch.manual_seed(step % 2)  # same point samples / tasks on alternate steps
        out = p.loss(p(images, "panoptic", targets), targets)
        assert torch.isfinite(out["loss"])
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    if kwargs.get("config_overrides"):
        assert "loss_contrastive" in out
    assert out["num_masks"] == 5
    assert sum(losses[-2:]) < 0.8 * sum(losses[:2]), losses


@pytest.mark.parametrize("name", list(PROPOSERS))
def test_loss_with_empty_and_crowd_targets(name, images):
    p = PROPOSERS[name](preset="tiny", num_classes=K, train_task="given") if name == "oneformer" else \
        PROPOSERS[name](preset="tiny", num_classes=K)
    ts = [make_target(0, labels=[]), make_target(2, crowd=[True, True])]
    out = p.loss(p(images, "panoptic", ts), ts)
    assert torch.isfinite(out["loss"]) and out["num_masks"] == 1  # clamped
    out["loss"].backward()


def test_targets_to_hf():
    t = make_target(4, labels=[0, 1, 1, 2], crowd=[False, False, False, True])
    m, c = targets_to_hf([t], "panoptic")
    assert m[0].shape == (3, SIZE, SIZE) and m[0].dtype == torch.float32 and c[0].tolist() == [0, 1, 1]
    m, c = targets_to_hf([t], "semantic")
    assert c[0].tolist() == [0, 1] and torch.equal(m[0][1].bool(), t.masks[1] | t.masks[2])
    m, c = targets_to_hf([t], "instance", is_thing=[False, True, True, True])
    assert c[0].tolist() == [1, 1]
    m, c = targets_to_hf([t], "panoptic", class_agnostic=True)
    assert c[0].tolist() == [0, 0, 0]
    m, c = targets_to_hf([t], "panoptic", keep_class=torch.tensor([True, False, True, True]))
    assert c[0].tolist() == [0]


# ------------------------------------------------------------------------------------ DDP
def test_num_masks_single_process():
    assert global_num_masks(0).item() == 1.0
    assert global_num_masks(7).item() == 7.0


_DDP_WORKER = """
import sys, torch.distributed as dist
from vitp.proposers.hf_targets import global_num_masks
rank, port = int(sys.argv[1]), int(sys.argv[2])
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
print(global_num_masks([3, 8][rank]).item())
dist.destroy_process_group()
"""


def test_num_masks_ddp_gloo():
    """Two gloo processes (light subprocesses: torch + hf_targets only)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [
        subprocess.Popen([sys.executable, "-c", _DDP_WORKER, str(r), str(port)], stdout=subprocess.PIPE, text=True)
        for r in range(2)
    ]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    # each rank normalises by the global mean (3 + 8) / 2; DDP's gradient averaging then yields
    # sum(all per-mask losses) / 11
    assert [float(o.strip().splitlines()[-1]) for o in outs] == [5.5, 5.5]


# ------------------------------------------------------------------------------------ labels
def test_normalize_class_name():
    assert normalize_class_name("wall-other-merged") == "wall"
    assert normalize_class_name("Tree_Merged") == "tree"
    assert normalize_class_name("traffic_light") == "traffic light"
    assert normalize_class_name("dining-table") == "dining table"


def test_build_label_mapping_by_name_and_explicit():
    src = ["person", "wall-other-merged", "car", "bus", "tree-merged", "cat"]
    dst = ["wall", "person;individual", "vehicle", "sky", "tree"]
    assert build_label_mapping(src, dst) == [1, 0, -1, -1, 4, -1]
    m = build_label_mapping(src, dst, label_map={"car": "vehicle", "bus": "vehicle", "tree-merged": None, 5: 1})
    assert m == [1, 0, 2, 2, -1, 1]
    assert build_label_mapping(src, None, num_target=3, label_map={0: 2}) == [2, -1, -1, -1, -1, -1]
    assert build_label_mapping(src, dst, match_by_name=False, label_map={"cat": "sky"}) == [-1] * 5 + [3]
    with pytest.raises(ValueError, match="no proposer class maps"):
        build_label_mapping(["dog"], ["cat"])
    with pytest.raises(KeyError):
        build_label_mapping(src, dst, label_map={"zebra": "sky"})


def test_label_space_mapper_semantics():
    s2t = [1, 0, 2, 2, -1]  # src 2,3 -> dst 2 ; src 4 unmapped ; dst 3 has no source
    logits = torch.randn(2, 3, 6, requires_grad=True)
    out = LabelSpaceMapper(s2t, 4, "drop")(logits)
    assert out.shape == (2, 3, 5)
    assert torch.equal(out[..., 0], logits[..., 1]) and torch.equal(out[..., 1], logits[..., 0])
    assert torch.allclose(out[..., 2], torch.logsumexp(logits[..., 2:4], -1))
    assert torch.isinf(out[..., 3]).all() and torch.equal(out[..., 4], logits[..., 5])
    p = out.softmax(-1)
    assert torch.allclose(p[..., 3], torch.zeros(())) and torch.allclose(p.sum(-1), torch.ones(()))
    torch.nn.functional.cross_entropy(out.reshape(-1, 5), torch.tensor([0, 1, 2, 4, 0, 1])).backward()
    assert torch.isfinite(logits.grad).all()
    void = LabelSpaceMapper(s2t, 4, "void")(logits)
    assert torch.allclose(void[..., 4], torch.logsumexp(logits[..., 4:6], -1))
    ident = LabelSpaceMapper([0, 1, 2], 3)
    assert ident.is_identity
    ag = agnostic_logits(logits)
    assert torch.allclose(ag.softmax(-1)[..., 1], logits.softmax(-1)[..., -1])


@pytest.mark.parametrize("name", list(PROPOSERS))
def test_pretrained_label_space_mapping(name, images, tmp_path):
    src_names = ["person", "wall-other-merged", "car", "tree-merged"]
    p = PROPOSERS[name](preset="tiny", class_names=src_names).eval()
    p.save_pretrained(tmp_path / "m")
    raw = p(images).class_logits.detach()

    dst = ["wall", "person", "sky"]
    q = PROPOSERS[name](model=str(tmp_path / "m"), class_names=dst).eval()
    assert q.num_classes == 3 and q.mapper is not None
    out = q(images).class_logits.detach()
    assert out.shape[-1] == 4
    assert torch.equal(out[..., 0], raw[..., 1]) and torch.equal(out[..., 1], raw[..., 0])
    assert torch.isinf(out[..., 2]).all() and torch.equal(out[..., 3], raw[..., 4])

    q2 = PROPOSERS[name](model=str(tmp_path / "m"), class_names=dst, label_map={"car": "person"}).eval()
    out2 = q2(images).class_logits.detach()
    assert torch.allclose(out2[..., 1], torch.logsumexp(raw[..., [0, 2]], -1))

    # the loss runs in the dataset space; segments of "sky" (no proposer class) are excluded
    q2.train()
    ts = [make_target(3, labels=[0, 1, 2]), make_target(2, labels=[2, 1])]
    loss = q2.loss(q2(images, "panoptic", ts), ts)
    assert torch.isfinite(loss["loss"]) and loss["num_masks"] == 3
    loss["loss"].backward()

    # nothing maps: the proposer records the mismatch (ViTPModule decides: tests/test_checkpoint_mismatch.py)
    # and refuses to run with the wrong head
    zebra = PROPOSERS[name](model=str(tmp_path / "m"), class_names=["zebra", "giraffe"])
    assert "no proposer class maps" in zebra.head_mismatch.detail
    with pytest.raises(ValueError, match="reinit_heads_on_mismatch"):
        zebra(images)
    seven = PROPOSERS[name](model=str(tmp_path / "m"), num_classes=7)
    assert "predicts 4 classes, the dataset has 7" in seven.head_mismatch.detail
    seven.reinit_class_head()
    assert seven.head_mismatch is None and seven.mapper is None
    assert seven.eval()(images).class_logits.shape[-1] == 8 and seven.hf.config.id2label[6] == "class_6"
    zebra.reinit_class_head()
    assert zebra.eval()(images).class_logits.shape[-1] == 3 and zebra.hf.config.id2label[1] == "giraffe"


# ------------------------------------------------------------------------------------ agnostic
@pytest.mark.parametrize("name", list(PROPOSERS))
def test_class_agnostic(name, images, targets, tmp_path):
    p = PROPOSERS[name](preset="tiny", class_agnostic=True)
    assert p.num_classes is None and p.hf.config.num_labels == 1
    pr = p.eval()(images)
    assert pr.class_logits is None
    obj = pr.objectness
    assert obj.shape == (2, p.num_queries) and ((obj >= 0) & (obj <= 1)).all()
    p.train()
    out = p.loss(p(images, "panoptic", targets), targets)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()

    # a K-class proposer used class-agnostically: objectness = 1 - p(no object)
    c = PROPOSERS[name](preset="tiny", num_classes=K).eval()
    c.save_pretrained(tmp_path / "k")
    a = PROPOSERS[name](model=str(tmp_path / "k"), class_agnostic=True).eval()
    with torch.no_grad():
        expected = 1 - c(images).class_logits.softmax(-1)[..., -1]
        assert torch.allclose(a(images).objectness, expected, atol=1e-6)


# ------------------------------------------------------------------------------------ freezing
@pytest.mark.parametrize("name", list(PROPOSERS))
def test_freeze(name):
    p = PROPOSERS[name](preset="tiny", num_classes=K, freeze="backbone")
    backbone = {id(x) for x in p.backbone_module().parameters()}
    for x in p.parameters():
        if id(x) in backbone:
            assert not x.requires_grad
    assert any(x.requires_grad for x in p.parameters()) and p.trainable
    p.train()
    assert not p.backbone_module().training and p.hf.model.pixel_level_module.decoder.training

    a = PROPOSERS[name](preset="tiny", num_classes=K, freeze="all")
    assert not any(x.requires_grad for x in a.parameters()) and not a.trainable
    a.train()
    assert not a.hf.training

    n = PROPOSERS[name](preset="tiny", num_classes=K, freeze="none")
    assert all(x.requires_grad for x in n.hf.model.parameters())
    n.apply_freeze("backbone")
    assert not any(x.requires_grad for x in n.backbone_module().parameters())


def test_oneformer_unused_params_frozen():
    p = OneFormerProposer(preset="tiny", num_classes=K)  # no text encoder: contrastive off
    assert not p.contrastive
    assert not any(x.requires_grad for x in p.hf.criterion.parameters())
    q = OneFormerProposer(preset="tiny", num_classes=K, config_overrides={"is_training": True})
    assert q.contrastive and all(x.requires_grad for x in q.hf.model.text_mapper.parameters())


def test_bad_arguments():
    with pytest.raises(ValueError, match="or `preset`"):
        Mask2FormerProposer(num_classes=3)
    with pytest.raises(ValueError, match="num_classes"):
        Mask2FormerProposer(preset="tiny")
    with pytest.raises(ValueError, match="unknown preset"):
        Mask2FormerProposer(preset="huge", num_classes=3)
    with pytest.raises(ValueError, match="class_names"):
        Mask2FormerProposer(preset="tiny", num_classes=3, class_names=["a", "b"])
