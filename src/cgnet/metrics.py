"""Segmentation metrics on one shared confusion matrix, scored as the Cityscapes benchmark scores them.

cityscapesscripts' evalPixelLevelSemanticLabeling gives a class IoU of NaN when its denominator
tp + fp + fn is zero (no ground-truth pixel and no predicted pixel of that class) and averages only the
non-NaN classes. torchmetrics' macro Jaccard would score such classes 0 and drag the mean down, so the
scores are computed here from the confusion matrix that torchmetrics accumulates and syncs across ranks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torchmetrics.classification import MulticlassConfusionMatrix


class SegmentationConfusionMatrix(MulticlassConfusionMatrix):
    """A [C, C] confusion matrix (rows: ground truth, columns: prediction) for dense label maps.

    ``update`` takes logits [B, C, H, W] or labels [B, H, W] and skips ``ignore_index`` pixels. It counts
    with one ``bincount`` and no boolean indexing, so it neither syncs the GPU nor takes torchmetrics'
    deterministic-mode fallback, which compares every pixel with all C^2 bins in an [N, C^2] tensor.
    Integer counts are exact in any order, so the result is deterministic anyway.
    """

    full_state_update = False

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        super().__init__(
            num_classes, ignore_index=ignore_index, normalize=None, validate_args=False
        )

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:  # type: ignore[override]
        if preds.ndim == target.ndim + 1:
            preds = preds.argmax(1)
        c = self.num_classes
        target = target.long()
        valid = (target != self.ignore_index) & (target >= 0) & (target < c)
        index = torch.where(valid, target * c + preds.long(), c * c)
        counts = torch.bincount(index.flatten(), minlength=c * c + 1)[: c * c]
        self.confmat += counts.reshape(c, c).to(self.confmat.dtype)


@dataclass(frozen=True)
class SegmentationScores:
    """Scores of one confusion matrix; NaN marks a class the benchmark leaves out of the mean."""

    iou: torch.Tensor
    miou: float
    pixel_accuracy: float
    category_iou: torch.Tensor | None = None
    miou_category: float | None = None


def iou_per_class(confmat: torch.Tensor) -> torch.Tensor:
    """IoU per class with cityscapesscripts' rule: NaN where tp + fp + fn == 0."""
    cm = confmat.double()
    tp = cm.diagonal()
    denom = cm.sum(0) + cm.sum(1) - tp
    return torch.where(denom > 0, tp / denom.clamp_min(1), torch.full_like(tp, float("nan")))


def nanmean(values: torch.Tensor) -> float:
    """Mean over the non-NaN entries (NaN if there are none), as getScoreAverage does."""
    return float(values.nanmean()) if bool(torch.isfinite(values).any()) else float("nan")


def category_confmat(confmat: torch.Tensor, class_to_category: Sequence[int]) -> torch.Tensor:
    """Sum class blocks into a category confusion matrix (Cityscapes' 7 categories)."""
    assign = torch.zeros(confmat.shape[0], max(class_to_category) + 1, dtype=confmat.dtype)
    assign[torch.arange(confmat.shape[0]), torch.as_tensor(class_to_category)] = 1
    return assign.T @ confmat.to(assign.device) @ assign


def scores_from_confmat(
    confmat: torch.Tensor, class_to_category: Sequence[int] | None = None
) -> SegmentationScores:
    """mIoU, per-class IoU, pixel accuracy and (optionally) category mIoU of one confusion matrix."""
    confmat = confmat.detach().cpu().double()
    iou = iou_per_class(confmat)
    total = confmat.sum()
    pixel_accuracy = float(confmat.diagonal().sum() / total) if total > 0 else float("nan")
    category_iou = miou_category = None
    if class_to_category is not None:
        category_iou = iou_per_class(category_confmat(confmat, class_to_category))
        miou_category = nanmean(category_iou)
    return SegmentationScores(iou, nanmean(iou), pixel_accuracy, category_iou, miou_category)
