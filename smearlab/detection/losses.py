"""Box-regression losses of the Faster R-CNN box head (``DetectorConfig.box_loss``).

torchvision's box head learns the four box offsets of each positive proposal with a smooth-L1
loss on the encoded offsets (``fastrcnn_loss``). An IoU-family loss scores the decoded box
instead, the quantity that mAP@[.5:.95] thresholds: GIoU (Rezatofighi et al., CVPR 2019), DIoU
and CIoU (Zheng et al., AAAI 2020), all three from ``torchvision.ops``.

The prediction and the target are both decoded against their proposal with the box coder's
weights (torchvision's ``BoxCoder.decode_single``) and compared in image pixels.

The loss is summed over the positive samples and divided by all sampled proposals, as
torchvision's smooth-L1 term is, and multiplied by :data:`IOU_LOSS_WEIGHT`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import complete_box_iou_loss, distance_box_iou_loss, generalized_box_iou_loss

#: The box losses ``DetectorConfig.box_loss`` accepts.
BOX_LOSSES = ("smooth_l1", "giou", "diou", "ciou")
_IOU_LOSSES = {"giou": generalized_box_iou_loss, "diou": distance_box_iou_loss, "ciou": complete_box_iou_loss}
#: The IoU-family term's weight: 10, the weight of mmdetection's GIoU configuration of Faster
#: R-CNN (``faster-rcnn_r50_fpn_giou_1x_coco``; its CIoU one uses 12). On the CPU recipe's model
#: as built, on CBC training images, the weighted term is about three times torchvision's
#: smooth-L1 term (0.062-0.075 against 0.020-0.032 on three batches of four images).
IOU_LOSS_WEIGHT = 10.0


def box_head_loss(class_logits, box_regression, labels, regression_targets, proposals, *, box_loss: str,
                  box_coder) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision's ``fastrcnn_loss`` with the box term chosen by ``box_loss``.

    Parameters
    ----------
    class_logits : ``(N, classes)`` scores of the sampled proposals.
    box_regression : ``(N, classes * 4)`` predicted offsets.
    labels, regression_targets, proposals : per image, the sampled proposals' classes, encoded
        targets and boxes.
    box_loss : one of :data:`BOX_LOSSES`.
    box_coder : the heads' ``BoxCoder`` (``roi_heads.box_coder``).

    Returns
    -------
    The classification loss and the box loss.
    """
    labels = torch.cat(labels, dim=0)
    regression_targets = torch.cat(regression_targets, dim=0)
    classification_loss = F.cross_entropy(class_logits, labels)
    pos = torch.where(labels > 0)[0]
    n = class_logits.shape[0]
    pred = box_regression.reshape(n, box_regression.size(-1) // 4, 4)[pos, labels[pos]]
    target = regression_targets[pos]
    if box_loss == "smooth_l1":
        loss = F.smooth_l1_loss(pred, target, beta=1 / 9, reduction="sum")
    else:
        boxes = torch.cat(proposals, dim=0)[pos]
        decoded = [box_coder.decode_single(d, boxes) for d in (pred, target)]
        loss = IOU_LOSS_WEIGHT * _IOU_LOSSES[box_loss](*decoded, reduction="sum")
    return classification_loss, loss / labels.numel()


class IoULossRoIHeads(RoIHeads):
    """torchvision's RoI heads (box only) with the box head's loss chosen by ``box_loss``.

    Prediction and everything but the training loss are torchvision's own."""

    box_loss: str = "smooth_l1"

    @classmethod
    def like(cls, heads: RoIHeads, box_loss: str) -> "IoULossRoIHeads":
        """The same heads (modules and settings) with the box loss ``box_loss``."""
        if heads.has_mask() or heads.has_keypoint():
            raise ValueError("box_loss other than 'smooth_l1' is for box-only detectors (no mask or keypoint head)")
        if box_loss not in BOX_LOSSES:
            raise ValueError(f"unknown box_loss {box_loss!r}; choose one of {list(BOX_LOSSES)}")
        new = cls(heads.box_roi_pool, heads.box_head, heads.box_predictor,
                  heads.proposal_matcher.high_threshold, heads.proposal_matcher.low_threshold,
                  heads.fg_bg_sampler.batch_size_per_image, heads.fg_bg_sampler.positive_fraction,
                  heads.box_coder.weights, heads.score_thresh, heads.nms_thresh, heads.detections_per_img)
        new.box_loss = box_loss
        return new

    def forward(self, features, proposals, image_shapes, targets=None):
        if not self.training:
            return super().forward(features, proposals, image_shapes, targets)
        if targets is None:
            raise ValueError("training needs targets")
        proposals, _, labels, regression_targets = self.select_training_samples(proposals, targets)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        loss_classifier, loss_box_reg = box_head_loss(class_logits, box_regression, labels, regression_targets,
                                                      proposals, box_loss=self.box_loss, box_coder=self.box_coder)
        return [], {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}
