"""``SegmentationDataModule`` serves any dataset: a subclass gives the label space and the datasets."""

from __future__ import annotations

import torch

from vitp.data import SegmentationDataModule
from vitp.data.collate import Sample
from vitp.structures import Batch, DatasetInfo

INFO = DatasetInfo(class_names=("a", "b"), category_ids=(3, 7), is_thing=(True, False))


def _sample(i: int, h: int, w: int) -> Sample:
    masks = torch.zeros(2, h, w, dtype=torch.bool)
    masks[0, : h // 2], masks[1, h // 2 :] = True, True
    return Sample(image=torch.zeros(3, h, w), masks=masks, labels=torch.tensor([0, 1]),
                  is_crowd=torch.zeros(2, dtype=torch.bool), segments=masks.long().argmax(0),
                  image_id=i, file_name=f"{i}.png", orig_size=(h, w))


class InMemoryDataModule(SegmentationDataModule):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.prepared = 0

    @property
    def dataset_info(self) -> DatasetInfo:
        return INFO

    def prepare_data(self) -> None:
        self.prepared += 1

    def build_dataset(self, stage):
        return [_sample(i, 20 + i, 30) for i in range({"train": 4, "val": 3, "test": 2}[stage])]


def test_subclass_gets_loaders_collation_and_device_transfer():
    dm = InMemoryDataModule(batch_size=2, eval_batch_size=3, num_workers=0, image_size=32,
                            pad_to_square=False, size_divisor=16)
    assert dm.num_classes == 2 and dm.hparams["batch_size"] == 2
    dm.setup("fit")
    assert dm.prepared == 1 and dm.test_dataset is None
    train = list(dm.train_dataloader())
    assert [len(b) for b in train] == [2, 2] and all(isinstance(b, Batch) for b in train)
    (val,) = list(dm.val_dataloader())
    assert val.images.shape == (3, 3, 32, 32)  # padded to a multiple of size_divisor
    assert [t.valid_size for t in val.targets] == [(20, 30), (21, 30), (22, 30)]
    assert dm.transfer_batch_to_device(val, torch.device("cpu"), 0).images.device.type == "cpu"
    dm.setup("predict")  # no predict_dir: the test dataset
    assert [len(b) for b in dm.predict_dataloader()] == [2]
