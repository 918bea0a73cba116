"""anomalib's ``Folder`` datamodule with the synthetic pairs of an export in the *training* split.

anomalib's Folder reads an exported folder as is (``Folder(**folder_kwargs(dir))``) but puts every
abnormal image in the test split, which suits one-class models (trained on the normals, tested on the
pairs). Models that learn from defect pairs (SuperSimpleNet with ``supervised=True``, a segmenter) need
them in training: ``PairsInTrainFolder`` is Folder with the abnormal images and their masks moved into
the training split, after Folder's own reading (same files, same masks, same transforms). Its test split
keeps only ``normal_test_dir`` images; evaluate on real defects with a second datamodule (anomalib's
``MVTecAD`` or ``Folder`` over the real dataset). Splitting a test or validation set out of the train
split is off by default (it would move synthetic pairs into evaluation); the validation set is then the
test split (only normals, possibly none).
"""

from __future__ import annotations

import copy
from typing import Any

import pandas as pd
from anomalib.data import Folder
from anomalib.data.utils import LabelName, Split, ValSplitMode


class PairsInTrainFolder(Folder):
    """Folder whose training split is ``normal_dir`` + the pairs of ``abnormal_dir`` / ``mask_dir``."""

    def __init__(self, *args: Any, test_split_mode: str = "none", val_split_mode: str = "none", **kwargs: Any) -> None:
        super().__init__(*args, test_split_mode=test_split_mode, val_split_mode=val_split_mode, **kwargs)

    def _setup(self, _stage: str | None = None) -> None:
        super()._setup(_stage)
        train, test = self.train_data.samples, self.test_data.samples
        is_pair = test["label_index"] == LabelName.ABNORMAL
        merged = pd.concat([train, test[is_pair].assign(split=Split.TRAIN)], ignore_index=True)
        merged.attrs = dict(test.attrs)  # "segmentation" when masks were given
        rest = test[~is_pair].reset_index(drop=True)
        rest.attrs = dict(test.attrs)
        self.train_data.samples = merged
        self.test_data.samples = rest
        if self.val_split_mode == ValSplitMode.NONE:  # Lightning's fit asks for a val loader: the test normals
            self.val_data = copy.deepcopy(self.test_data)
