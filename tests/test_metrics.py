"""The benchmark-definition mIoU against a confusion matrix computed by hand."""

from __future__ import annotations

import math

import torch

from cgnet.metrics import SegmentationConfusionMatrix, category_confmat, scores_from_confmat


def test_confusion_matrix_counts_and_skips_ignore() -> None:
    target = torch.tensor([[0, 0, 1, 255], [2, 2, 2, 1]])
    pred = torch.tensor([[0, 1, 1, 0], [2, 0, 2, 1]])
    metric = SegmentationConfusionMatrix(4, ignore_index=255)
    metric.update(pred[None], target[None])
    expected = torch.tensor([[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 2, 0], [0, 0, 0, 0]])
    assert torch.equal(metric.compute(), expected)


def test_logits_are_argmaxed() -> None:
    target = torch.tensor([[[1, 0]]])
    logits = torch.tensor([[[[0.1, 5.0]], [[2.0, 1.0]]]])  # [1, 2, 1, 2]: argmax = [1, 0]
    metric = SegmentationConfusionMatrix(2)
    metric.update(logits, target)
    assert torch.equal(metric.compute(), torch.tensor([[1, 0], [0, 1]]))


def test_miou_matches_hand_computation_with_absent_classes() -> None:
    # rows = ground truth, columns = prediction; 5 classes.
    # class 3: absent from ground truth but predicted once -> IoU 0, counted (as cityscapesscripts does)
    # class 4: absent from ground truth and never predicted -> NaN, left out of the mean
    cm = torch.tensor(
        [
            [50, 5, 0, 1, 0],
            [10, 30, 0, 0, 0],
            [0, 0, 20, 0, 0],
            [0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0],
        ]
    )
    scores = scores_from_confmat(cm)
    iou0 = 50 / (56 + 60 - 50)
    iou1 = 30 / (40 + 35 - 30)
    iou2 = 1.0
    iou3 = 0.0
    assert torch.allclose(
        scores.iou[:4], torch.tensor([iou0, iou1, iou2, iou3], dtype=torch.float64)
    )
    assert math.isnan(scores.iou[4])
    assert math.isclose(scores.miou, (iou0 + iou1 + iou2 + iou3) / 4)
    assert math.isclose(scores.pixel_accuracy, 100 / 116)
    # torchmetrics' macro Jaccard would average 5 classes and report a lower number
    assert scores.miou > (iou0 + iou1 + iou2) / 5


def test_category_miou_sums_class_blocks() -> None:
    cm = torch.tensor([[4, 1, 0], [2, 3, 0], [0, 1, 5]])
    cat = category_confmat(cm, [0, 0, 1])
    assert torch.equal(cat, torch.tensor([[10, 0], [1, 5]]))
    scores = scores_from_confmat(cm, [0, 0, 1])
    assert scores.miou_category is not None
    assert math.isclose(scores.miou_category, (10 / 11 + 5 / 6) / 2)


def test_metric_accumulates_over_batches() -> None:
    metric = SegmentationConfusionMatrix(3)
    a, b = torch.randint(0, 3, (2, 4, 5, 6))
    metric.update(a[:2], b[:2])
    metric.update(a[2:], b[2:])
    once = SegmentationConfusionMatrix(3)
    once.update(a, b)
    assert torch.equal(metric.compute(), once.compute())
    assert int(metric.compute().sum()) == a.numel()
