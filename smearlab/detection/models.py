"""Detector builders, saving and loading: torchvision detectors, trained from scratch unless
pretrained weights are asked for.

Architectures (``DetectorConfig.arch``):

* ``"fasterrcnn"``: Faster R-CNN, ResNet-50 FPN (torchvision ``fasterrcnn_resnet50_fpn``);
* ``"fasterrcnn_v2"``: the improved Faster R-CNN (``fasterrcnn_resnet50_fpn_v2``);
* ``"retinanet"``: RetinaNet, ResNet-50 FPN (``retinanet_resnet50_fpn``);
* ``"fasterrcnn_mobilenet"``: Faster R-CNN, MobileNet-V3-Large FPN: the light CPU model;
* ``"fasterrcnn_tiny"``: a ~1M-parameter Faster R-CNN with a small plain CNN backbone, for
  smoke tests and quick CPU looks only (no pretrained weights exist for it);
* ``"maskrcnn"``: Mask R-CNN, ResNet-50 FPN (torchvision ``maskrcnn_resnet50_fpn``): boxes and
  instance masks;
* ``"maskrcnn_tiny"``: the tiny backbone of ``fasterrcnn_tiny`` with Mask R-CNN heads and a
  small (2 x 64-channel) mask head, for quick CPU runs and tests.

The Mask R-CNN models (:data:`MASK_ARCHS`, :func:`is_mask_model`) train on datasets with
instance masks and predict ``masks`` beside the boxes (see
:func:`smearlab.detection.predict.predict`).

Models are always built with ``weights=None, weights_backbone=None``. Pretrained weights are an
opt-in: a local file (``DetectorConfig.weights_path``), either a classification backbone state
dict (e.g. torchvision's ``resnet50-*.pth``) or a whole detector state dict (e.g. a COCO
checkpoint, whose class-specific predictor layers are skipped when the class count differs); or
torchvision's weights API for the backbone (``DetectorConfig.backbone_weights="DEFAULT"`` or a
weights name), read from torch's own cache (:func:`backbone_weights_file`). Nothing is fetched
unless ``backbone_weights`` asks for it.

Labels: a model has ``len(class_names) + 1`` classes; 0 is background (torchvision's rule).

A saved model is a folder::

    weights.pt        {"format", "arch", "class_names", "state_dict"}
    config.json       the DetectorConfig (class names included)
    thresholds.json   optional tuned thresholds (``Thresholds.to_dict()``: ``score`` per class, NMS...)
    preprocess.json   optional preprocessing pipeline (any dict)
"""
from __future__ import annotations

import dataclasses
import json
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import mobilenet_v3_large, resnet50
from torchvision.models.detection import FasterRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import (_mobilenet_extractor, _resnet_fpn_extractor,
                                                         BackboneWithFPN)
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import misc as misc_nn_ops
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool, LastLevelP6P7

from ..core.device import resolve_device
from ..core.errors import DataError
from ..core.files import read_torch_file
from ..core.model_folder import read_config_json, read_model_folder, read_side_file, save_model_folder, state_dict_of
from .losses import BOX_LOSSES, IoULossRoIHeads

log = logging.getLogger("smearlab.detection")

ARCHS = ("fasterrcnn", "fasterrcnn_v2", "retinanet", "fasterrcnn_mobilenet", "fasterrcnn_tiny", "maskrcnn",
         "maskrcnn_tiny")
#: Architectures that predict instance masks (Mask R-CNN).
MASK_ARCHS = ("maskrcnn", "maskrcnn_tiny")
#: Architectures built on the tiny plain-CNN backbone (3 feature levels).
_TINY_ARCHS = ("fasterrcnn_tiny", "maskrcnn_tiny")
#: Ways of adding a stride-4 level that the tiny models' box heads pool from (``fine_level``).
FINE_LEVELS = ("lateral", "fpn")
#: ImageNet statistics (torchvision's GeneralizedRCNNTransform defaults).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_LUMA = (0.299, 0.587, 0.114)
#: Backbone layers that can be trained (torchvision's maxima) per backbone family.
_MAX_TRAINABLE = {"fasterrcnn": 5, "fasterrcnn_v2": 5, "retinanet": 5, "fasterrcnn_mobilenet": 6,
                  "fasterrcnn_tiny": 4, "maskrcnn": 5, "maskrcnn_tiny": 4}


@dataclass
class DetectorConfig:
    """Everything needed to rebuild a detector (saved as ``config.json``).

    Parameters
    ----------
    arch : one of :data:`ARCHS`.
    class_names : object classes (no background entry).
    in_channels : 3 (RGB) or 1 (grey; the first backbone convolution takes one channel).
    min_size, max_size : the model's input resize (torchvision ``GeneralizedRCNNTransform``):
        the short side goes to ``min_size`` unless the long side would exceed ``max_size``.
    anchor_sizes : anchor sizes in pixels (of the resized image). Either one tuple per feature
        level, or a flat list: for the ResNet FPN models one size per level (5 values), for the
        MobileNet model all sizes on each of its 3 levels, for RetinaNet ``x, x*2^(1/3),
        x*2^(2/3)`` per level. None: torchvision's defaults (32 .. 512).
    aspect_ratios : anchor height/width ratios, the same for every level (None: 0.5, 1, 2).
    detections_per_img : maximum detections per image (dense smears need more than 100).
    score_floor : lowest score kept at inference (raw predictions for caching / evaluation).
    trainable_backbone_layers : backbone stages trained, counted from the last one
        (None: all for a model from scratch, 3 with pretrained weights).
    freeze_backbone : freeze the whole backbone body (the FPN and heads still train).
    weights_path : local file with pretrained weights (backbone or whole detector).
    backbone_weights : pretrained backbone weights by torchvision's weights API, opt-in:
        ``"DEFAULT"`` (the arch's backbone's default, e.g. ``ResNet50_Weights.IMAGENET1K_V2``) or a
        weights name (``"ResNet50_Weights.IMAGENET1K_V1"``); read from torch's own cache
        (:func:`backbone_weights_file`), fetched only because they were asked for, and a clear
        error naming the file and where to put it when that fails (offline). None: none.
    frozen_bn : use frozen batch norm in the backbone (None: when pretrained or frozen).
    extra : further keyword arguments of torchvision's ``FasterRCNN`` / ``MaskRCNN`` /
        ``RetinaNet`` (e.g. ``{"box_nms_thresh": 0.4, "rpn_post_nms_top_n_test": 2000}``).
    object_sizes : the training scale, ``{class: {"size", "count"}}``: the median side of each
        class's training boxes at the model's input scale (set by training; see
        :mod:`smearlab.detection.scale`), which scale-aware prediction compares new images with.
    train_image_size : the median short and long sides in pixels of the training images (or
        tiles), set by training (:func:`median_sides`; a folder saved before 2026-12-07 holds the
        median height and width): a field much larger than that is cut into tiles of this size
        (``smearlab predict``'s automatic tiling, :func:`auto_tile`). Only the sides count, not
        which is the height: the detector resizes an image by its short and long sides.
    pixel_size_um : the training images' pixel size in micrometres, when the user knows it:
        new images of a known pixel size are then resized to the training scale
        (``smearlab predict --pixel-size``), with no estimate from the cells.
    sensor_bits : the camera's bits per value every training image was read with (``sensor_bits``
        of the dataset, e.g. 12 for 12-bit data in 16-bit files; set by training), so that
        ``smearlab predict`` reads new images of that camera alike without ``--sensor-bits``
        (else their range is guessed per image, and a dim 12-bit frame reached the model up to
        16 times brighter than its training images). None: not given in training.
    fine_level : tiny models only: a stride-4 feature level for the box head's RoI pooling (the
        RPN and its anchors stay on strides 8-32). Without it every RoI smaller than 224 px pools
        from stride 8, where a 25-px platelet spans three cells. ``"lateral"``: the stride-4 stage
        through a 1x1 convolution plus the upsampled stride-8 level (cheap); ``"fpn"``: a full
        pyramid level (also a 3x3 convolution). RoIs are assigned to levels by torchvision's
        rule (below 112 px: stride 4). None: no such level.
    box_loss : the box head's regression loss during training, one of
        :data:`~smearlab.detection.losses.BOX_LOSSES`: ``"smooth_l1"`` (torchvision's, on the
        encoded offsets) or an IoU-family loss on the decoded boxes (``"giou"``, ``"diou"``,
        ``"ciou"``). Faster R-CNN models only; prediction is the same for all.
    """

    arch: str = "fasterrcnn_mobilenet"
    class_names: Sequence[str] = ("RBC", "WBC", "Platelets")
    in_channels: int = 3
    min_size: int = 800
    max_size: int = 1333
    anchor_sizes: Sequence | None = None
    aspect_ratios: Sequence[float] | None = None
    detections_per_img: int = 300
    score_floor: float = 0.01
    trainable_backbone_layers: int | None = None
    freeze_backbone: bool = False
    weights_path: str | None = None
    backbone_weights: str | None = None
    frozen_bn: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    object_sizes: dict[str, dict[str, float]] | None = None
    train_image_size: Sequence[int] | None = None
    pixel_size_um: float | None = None
    sensor_bits: int | None = None
    fine_level: str | None = None
    box_loss: str = "smooth_l1"

    def __post_init__(self):
        self.class_names = [str(c) for c in self.class_names]
        if self.arch not in ARCHS:
            raise ValueError(f"unknown detector arch {self.arch!r}; choose one of {list(ARCHS)}")
        if not self.class_names:
            raise ValueError("class_names is empty: a detector needs at least one class")
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"class_names has duplicates: {self.class_names}")
        if self.in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {self.in_channels}")
        if self.weights_path is not None:
            self.weights_path = str(self.weights_path)
        if self.pixel_size_um is not None and not float(self.pixel_size_um) > 0:
            raise ValueError(f"pixel_size_um must be a positive number of micrometres, got {self.pixel_size_um!r}")
        self.extra = dict(self.extra or {})
        if self.fine_level is not None:
            if self.fine_level not in FINE_LEVELS:
                raise ValueError(f"unknown fine_level {self.fine_level!r}; choose one of {list(FINE_LEVELS)} or None")
            if self.arch not in _TINY_ARCHS:
                raise ValueError(f"fine_level is for the tiny models {list(_TINY_ARCHS)}, not {self.arch!r}")
        if self.box_loss not in BOX_LOSSES:
            raise ValueError(f"unknown box_loss {self.box_loss!r}; choose one of {list(BOX_LOSSES)}")
        if self.box_loss != "smooth_l1" and (self.arch == "retinanet" or self.arch in MASK_ARCHS):
            raise ValueError(f"box_loss {self.box_loss!r} is for the Faster R-CNN models, not {self.arch!r}")

    @property
    def num_classes(self) -> int:
        """Classes including background (what torchvision's constructors take)."""
        return len(self.class_names) + 1

    @property
    def uses_frozen_bn(self) -> bool:
        if self.frozen_bn is not None:
            return bool(self.frozen_bn)
        return self.pretrained or bool(self.freeze_backbone)

    @property
    def pretrained(self) -> bool:
        """Whether the model starts from pretrained weights (a local file or torchvision's)."""
        return self.weights_path is not None or self.backbone_weights is not None

    def to_dict(self) -> dict[str, Any]:
        """The config as a JSON-ready dict (``frozen_bn`` resolved, so that a saved model rebuilds
        the same layers)."""
        d = dataclasses.asdict(self)
        d["frozen_bn"] = self.uses_frozen_bn  # resolved: a saved model rebuilds the same layers
        return json.loads(json.dumps(d, default=_jsonable))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DetectorConfig":
        """A config from :meth:`to_dict` (unknown keys are logged and ignored).

        Parameters
        ----------
        d : ``{field name: value}``; missing fields take their defaults.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            log.warning("ignoring unknown detector config keys %s", unknown)
        return cls(**{k: v for k, v in d.items() if k in names})


def _jsonable(o):
    if isinstance(o, (tuple, set)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# ---------------------------------------------------------------------------------------------
# devices
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# building
# ---------------------------------------------------------------------------------------------
def n_feature_levels(arch: str) -> int:
    """How many feature levels (anchor sets) a detector architecture has: 3 for the tiny and
    MobileNet models, 5 for the ResNet-50 FPN models.

    Parameters
    ----------
    arch : one of :data:`ARCHS`.
    """
    return 3 if arch in _TINY_ARCHS or arch == "fasterrcnn_mobilenet" else 5


def anchor_generator(cfg: DetectorConfig):
    """torchvision's ``AnchorGenerator`` for ``cfg``: its ``anchor_sizes`` and ``aspect_ratios``,
    or the arch's defaults (torchvision's 32..512; 16, 32, 64 for the tiny models).

    Parameters
    ----------
    cfg : the detector's settings.
    """
    n_levels = n_feature_levels(cfg.arch)

    arch = cfg.arch
    sizes = cfg.anchor_sizes
    if sizes is None:
        if arch == "fasterrcnn_mobilenet":
            sizes = ((32, 64, 128, 256, 512),) * n_levels
        elif arch in _TINY_ARCHS:
            sizes = ((16,), (32,), (64,))
        elif arch == "retinanet":
            sizes = [32, 64, 128, 256, 512]
        else:
            sizes = ((32,), (64,), (128,), (256,), (512,))
    sizes = list(sizes)
    if all(isinstance(s, (int, float)) for s in sizes):  # flat list
        flat = [int(s) for s in sizes]
        if arch == "fasterrcnn_mobilenet":
            sizes = [tuple(flat)] * n_levels
        elif arch == "retinanet":
            sizes = [(x, int(x * 2 ** (1 / 3)), int(x * 2 ** (2 / 3))) for x in flat]
        else:
            sizes = [(x,) for x in flat]
    sizes = tuple(tuple(int(v) for v in s) for s in sizes)
    if len(sizes) != n_levels:
        raise ValueError(f"{arch} has {n_levels} feature levels but anchor_sizes gives {len(sizes)}: "
                         f"{cfg.anchor_sizes}")
    ratios = tuple(float(r) for r in (cfg.aspect_ratios or (0.5, 1.0, 2.0)))
    return AnchorGenerator(sizes, (ratios,) * n_levels)


def auto_tile(cfg: DetectorConfig, hw, factor: float = 1.5) -> int | None:
    """The tile side for an image of size ``hw`` at the training magnification: the training
    images' longer side when the image is more than ``factor`` times larger than them on either
    side (the model would otherwise shrink its cells below their training size), else None.

    Parameters
    ----------
    cfg : the detector's settings (``train_image_size``; None for a model trained before it
        was recorded: never tiled).
    hw : ``(height, width)`` of the image.
    factor : how much larger than the training images an image must be to be tiled.
    """
    if not cfg.train_image_size:
        return None
    t_short, t_long = sorted(int(v) for v in cfg.train_image_size)
    short, long = sorted((int(hw[0]), int(hw[1])))  # a portrait field against landscape training images
    if short > factor * t_short or long > factor * t_long:
        return t_long
    return None


def smaller_than_training(cfg: DetectorConfig, hw) -> bool:
    """Whether an image of ``hw`` is smaller than the training images (``cfg.train_image_size``,
    ``[short, long]``) on both sides, orientation aside, and not their size: ``smearlab predict``
    sees it whole at the training magnification (``scale=1``), and fine-tuning pads it to the
    training size for the same reason. False for a model that does not record the size.

    Parameters
    ----------
    cfg : the detector's settings.
    hw : ``(height, width)`` of the image.
    """
    if not cfg.train_image_size:
        return False
    short, long = sorted(int(v) for v in hw)
    t_short, t_long = sorted(int(v) for v in cfg.train_image_size)
    return short <= t_short and long <= t_long and (short, long) != (t_short, t_long)


def median_sides(sizes) -> list[int]:
    """``[short, long]``: the median short and long sides of images of ``sizes`` (``(h, w)``
    each), what :attr:`DetectorConfig.train_image_size` records. The medians of heights and
    widths would mix orientations: a set of 480 x 640 and 640 x 480 images gave 560 x 560, whose
    magnification is 0.86 of the one the detector saw every image at.

    Parameters
    ----------
    sizes : ``(height, width)`` of each image.
    """
    sides = np.sort(np.asarray(list(sizes), np.float64).reshape(-1, 2), axis=1)
    return [int(v) for v in np.median(sides, 0)]


def _trainable_layers(cfg: DetectorConfig) -> int:
    mx = _MAX_TRAINABLE[cfg.arch]
    if cfg.freeze_backbone:
        return 0
    if cfg.trainable_backbone_layers is None:
        return 3 if cfg.pretrained else mx
    n = int(cfg.trainable_backbone_layers)
    if not 0 <= n <= mx:
        raise ValueError(f"trainable_backbone_layers for {cfg.arch} must be in 0..{mx}, got {n}")
    return n


def _base_model(cfg: DetectorConfig) -> nn.Module:
    """The detector ``cfg`` describes, weights as built (what :func:`build_detector` and
    :func:`load_model` start from)."""
    model = _torchvision_model(cfg)
    if cfg.box_loss != "smooth_l1":
        model.roi_heads = IoULossRoIHeads.like(model.roi_heads, cfg.box_loss)
    return model


def _torchvision_model(cfg: DetectorConfig) -> nn.Module:

    norm = misc_nn_ops.FrozenBatchNorm2d if cfg.uses_frozen_bn else nn.BatchNorm2d
    trainable = _trainable_layers(cfg)
    if cfg.in_channels == 1:
        mean = [sum(w * m for w, m in zip(_LUMA, IMAGENET_MEAN))]
        std = [sum(w * s for w, s in zip(_LUMA, IMAGENET_STD))]
    else:
        mean, std = list(IMAGENET_MEAN), list(IMAGENET_STD)
    common = dict(min_size=cfg.min_size, max_size=cfg.max_size, image_mean=mean, image_std=std)
    extra = dict(cfg.extra)

    if cfg.arch == "retinanet":
        body = resnet50(weights=None, norm_layer=norm)
        backbone = _resnet_fpn_extractor(body, trainable, returned_layers=[2, 3, 4],
                                         extra_blocks=LastLevelP6P7(256, 256))
        kw = dict(anchor_generator=anchor_generator(cfg), score_thresh=cfg.score_floor,
                  detections_per_img=cfg.detections_per_img)
        return RetinaNet(backbone, cfg.num_classes, **{**common, **kw, **extra})

    kw = dict(box_score_thresh=cfg.score_floor, box_detections_per_img=cfg.detections_per_img)
    if cfg.arch == "fasterrcnn":
        body = resnet50(weights=None, norm_layer=norm)
        backbone = _resnet_fpn_extractor(body, trainable)
        kw["rpn_anchor_generator"] = anchor_generator(cfg)
    elif cfg.arch == "fasterrcnn_v2":
        body = resnet50(weights=None, norm_layer=norm)
        backbone = _resnet_fpn_extractor(body, trainable, norm_layer=nn.BatchNorm2d)
        anchors = anchor_generator(cfg)
        kw["rpn_anchor_generator"] = anchors
        kw["rpn_head"] = RPNHead(backbone.out_channels, anchors.num_anchors_per_location()[0], conv_depth=2)
        kw["box_head"] = FastRCNNConvFCHead((backbone.out_channels, 7, 7), [256, 256, 256, 256], [1024],
                                            norm_layer=nn.BatchNorm2d)
    elif cfg.arch == "maskrcnn":
        body = resnet50(weights=None, norm_layer=norm)
        backbone = _resnet_fpn_extractor(body, trainable)
        kw["rpn_anchor_generator"] = anchor_generator(cfg)
        return MaskRCNN(backbone, cfg.num_classes, **{**common, **kw, **extra})
    elif cfg.arch in _TINY_ARCHS:
        backbone = _tiny_backbone(norm, cfg.fine_level)
        anchors = anchor_generator(cfg)
        kw["rpn_anchor_generator"] = anchors
        kw["rpn_head"] = RPNHead(backbone.out_channels, anchors.num_anchors_per_location()[0])
        kw["box_head"] = TwoMLPHead(backbone.out_channels * 7 * 7, 128)
        kw["box_predictor"] = FastRCNNPredictor(128, cfg.num_classes)
        kw.update(rpn_pre_nms_top_n_train=600, rpn_post_nms_top_n_train=300, rpn_pre_nms_top_n_test=600,
                  rpn_post_nms_top_n_test=300, box_batch_size_per_image=128)
        if cfg.fine_level is not None:
            kw["box_roi_pool"] = MultiScaleRoIAlign(["fine", "0", "1"], output_size=7, sampling_ratio=2)
        if cfg.arch == "maskrcnn_tiny":
            kw["mask_head"] = MaskRCNNHeads(backbone.out_channels, [64, 64], 1)
            kw["mask_predictor"] = MaskRCNNPredictor(64, 64, cfg.num_classes)
            model = MaskRCNN(backbone, None, **{**common, **kw, **extra})
        else:
            model = FasterRCNN(backbone, None, **{**common, **kw, **extra})
        if cfg.fine_level is not None:
            model.rpn = _CoarseRPN.like(model.rpn)
        return model
    else:  # fasterrcnn_mobilenet
        body = mobilenet_v3_large(weights=None, norm_layer=norm)
        backbone = _mobilenet_extractor(body, True, trainable)
        kw["rpn_anchor_generator"] = anchor_generator(cfg)
        kw["rpn_score_thresh"] = 0.05  # torchvision's default for this model
    return FasterRCNN(backbone, cfg.num_classes, **{**common, **kw, **extra})


def _tiny_backbone(norm, fine_level: str | None = None) -> nn.Module:
    """Plain 4-stage CNN (strides 2, 4, 8, 16) + 64-channel FPN on strides 8, 16 (+ pool: 32),
    with a stride-4 level ``"fine"`` first when ``fine_level`` asks for one (``DetectorConfig``)."""

    def block(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1, bias=False), norm(cout), nn.ReLU(inplace=True),
                             nn.Conv2d(cout, cout, 3, 1, 1, bias=False), norm(cout), nn.ReLU(inplace=True))

    body = nn.Sequential()
    body.add_module("stem", block(3, 16))
    body.add_module("layer1", block(16, 32))
    body.add_module("layer2", block(32, 64))
    body.add_module("layer3", block(64, 96))
    if fine_level == "fpn":  # one pyramid over strides 4, 8, 16 (+ pool)
        return BackboneWithFPN(body, {"layer1": "fine", "layer2": "0", "layer3": "1"}, [32, 64, 96], 64,
                               extra_blocks=LastLevelMaxPool())
    if fine_level == "lateral":
        return _LateralFineLevel(body, 64)
    return BackboneWithFPN(body, {"layer2": "0", "layer3": "1"}, [64, 96], 64, extra_blocks=LastLevelMaxPool())


def _first_conv(model: nn.Module) -> tuple[str, nn.Module, str, nn.Conv2d]:
    """(state-dict key prefix, parent module, attribute name, conv) of the backbone's first conv."""
    body = model.backbone.body
    for name, mod in body.named_modules():
        if isinstance(mod, nn.Conv2d):
            parent = body
            parts = name.split(".")
            for p in parts[:-1]:
                parent = getattr(parent, p)
            return "backbone.body." + name, parent, parts[-1], mod
    raise RuntimeError("no convolution in the backbone")  # pragma: no cover


def _to_one_channel(model: nn.Module) -> None:
    """Replace the first backbone convolution by a 1-channel one (sum of the RGB kernels)."""
    _, parent, attr, conv = _first_conv(model)
    if conv.in_channels == 1:
        return
    new = nn.Conv2d(1, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    conv.groups, conv.bias is not None, conv.padding_mode)
    with torch.no_grad():
        new.weight.copy_(conv.weight.sum(1, keepdim=True))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    new.weight.requires_grad_(conv.weight.requires_grad)
    if new.bias is not None:
        new.bias.requires_grad_(conv.bias.requires_grad)
    setattr(parent, attr, new)


def _read_weights(path, what: str = "pretrained weights") -> dict:
    """The torch file of local weights (a file, or a model folder's ``weights.pt``)."""
    p = Path(path)
    if p.is_dir():
        p = p / "weights.pt"
    if not p.is_file():
        raise DataError(p, f"{what} must be a local file; got {str(path)!r}, which does not exist "
                           "(for torchvision's weights by name, use backbone_weights)")
    return read_torch_file(p, what)


#: The torchvision backbone each arch is built on (the ones pretrained weights exist for).
BACKBONE_OF = {"fasterrcnn": "resnet50", "fasterrcnn_v2": "resnet50", "retinanet": "resnet50", "maskrcnn": "resnet50",
               "fasterrcnn_mobilenet": "mobilenet_v3_large"}


def backbone_weights_file(cfg: DetectorConfig, *, download: bool = True) -> Path:
    """The file of ``cfg.backbone_weights`` in torch's own cache (``torch.hub.get_dir()/checkpoints``).

    The file is used when it is there. Otherwise, because the user asked for these weights, it
    is fetched into the cache with torch's downloader (``download=False`` never tries); when that
    fails (offline), a :class:`DataError` names the file, its address and where to put it.

    Parameters
    ----------
    cfg : a config with ``backbone_weights`` set.
    download : fetch a missing file.

    Raises
    ------
    ValueError
        for an arch without a torchvision backbone (the tiny models) or weights of another backbone.
    DataError
        when the file is not in the cache and cannot be fetched.
    """
    import os
    from urllib.parse import urlparse

    from torchvision.models import get_model_weights, get_weight
    backbone = BACKBONE_OF.get(cfg.arch)
    if backbone is None:
        raise ValueError(f"{cfg.arch} has no torchvision backbone with pretrained weights; "
                         f"archs that have one: {sorted(BACKBONE_OF)}")
    enum = get_model_weights(backbone)
    name = str(cfg.backbone_weights)
    if name.upper() == "DEFAULT":
        weights = enum.DEFAULT
    else:
        try:
            weights = get_weight(name if "." in name else f"{enum.__name__}.{name}")
        except (ValueError, KeyError, AttributeError) as e:
            raise ValueError(f"unknown weights {name!r}; {backbone} has {[w.name for w in enum]}") from e
        if not isinstance(weights, enum):
            raise ValueError(f"{name} are not weights of {backbone} (the {cfg.arch} backbone); "
                             f"choose one of {[f'{enum.__name__}.{w.name}' for w in enum]}")
    file = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)
    if file.is_file():
        return file
    problem = "download=False"
    if download:
        log.info("fetching %s into torch's cache %s (asked for with backbone_weights)", weights, file)
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(weights.url, str(file), progress=True)
            return file
        except Exception as e:  # noqa: BLE001 - any network failure ends in the same instruction
            problem = f"{type(e).__name__}: {e}"
    raise DataError(file, f"the pretrained backbone weights {enum.__name__}.{weights.name} are not in torch's cache "
                          f"and could not be fetched ({problem}); download {weights.url} on a machine with network "
                          f"access and place it at this path (or set TORCH_HOME), or give a local file as weights_path")


#: The class-specific tensors of the detectors' heads: name -> rows per class (background is class 0).
_CLASS_ROWS = {"roi_heads.box_predictor.cls_score": 1, "roi_heads.box_predictor.bbox_pred": 4,
               "roi_heads.mask_predictor.mask_fcn_logits": 1, "head.classification_head.cls_logits": 1}


def _map_class_rows(sd: dict, own: dict, saved: Sequence[str], names: Sequence[str], path) -> dict:
    """``sd`` with its class-specific head tensors rearranged from the classes ``saved`` to
    ``names`` by name: a class in both keeps its trained rows, a new one keeps ``own``'s fresh rows
    (trained from scratch), background keeps its row. Copied by position, a model started from a
    folder of the same classes in another order called every RBC a WBC."""
    saved, names = [str(c) for c in saved], [str(c) for c in names]
    if saved == names:
        return sd
    out = dict(sd)
    for base, per in _CLASS_ROWS.items():
        for k in (f"{base}.weight", f"{base}.bias"):
            if k not in sd or k not in own:
                continue
            old, new = sd[k], own[k].clone()
            # RetinaNet interleaves anchors: channel a * (K + 1) + class
            groups_old, groups_new = old.shape[0] // (per * (len(saved) + 1)), new.shape[0] // (per * (len(names) + 1))
            if groups_old != groups_new or old.shape[1:] != new.shape[1:] \
                    or old.shape[0] != groups_old * per * (len(saved) + 1):
                out.pop(k)  # another head: trained from scratch
                continue
            o = old.reshape(groups_old, len(saved) + 1, per, *old.shape[1:])
            n = new.reshape(groups_new, len(names) + 1, per, *new.shape[1:])
            n[:, 0] = o[:, 0]  # background
            for j, name in enumerate(names):
                if name in saved:
                    n[:, j + 1] = o[:, saved.index(name) + 1]
            out[k] = n.reshape(new.shape)
    kept = [c for c in names if c in saved]
    log.info("%s: the head's classes mapped by name from %s to %s (%s kept%s)", path, saved, names,
             ", ".join(kept) or "none",
             "; " + ", ".join(c for c in names if c not in saved) + " trained from scratch"
             if len(kept) < len(names) else "")
    return out


def _load_pretrained(model: nn.Module, cfg: DetectorConfig, path=None) -> None:
    path = cfg.weights_path if path is None else path
    sd, meta = state_dict_of(_read_weights(path), path)
    key, *_ = _first_conv(model)
    own = model.state_dict()
    if any(k.startswith(("backbone.", "rpn.", "roi_heads.", "head.")) for k in sd):
        target, prefix = "detector", ""
        saved = meta.get("class_names")
        if saved is None and isinstance(meta.get("model_config"), dict):  # a training checkpoint
            saved = meta["model_config"].get("class_names")
        if saved is not None:
            sd = _map_class_rows(sd, own, saved, cfg.class_names, path)
        elif any(k in sd and k in own and sd[k].shape == own[k].shape for k in (f"{b}.weight" for b in _CLASS_ROWS)):
            log.warning("%s carries no class names (a bare state dict): its head's classes are taken in the order "
                        "%s; give a model folder to have them matched by name", path, list(cfg.class_names))
    else:  # classification backbone: resnet (conv1, layer1..) or mobilenet (features.N)
        target, prefix = "backbone", "backbone.body."
        sd = {k[len("features."):] if k.startswith("features.") else k: v for k, v in sd.items()}
        sd = {prefix + k: v for k, v in sd.items()}
    conv_w = sd.get(key + ".weight")
    if conv_w is not None and conv_w.ndim == 4 and conv_w.shape[1] == 1:
        _to_one_channel(model)  # weights of a grey model
        own = model.state_dict()
    load, skipped = {}, []
    for k, v in sd.items():
        if k in own and own[k].shape == v.shape:
            load[k] = v
        elif k in own:
            skipped.append(k)
    if not load:
        raise DataError(path, f"no tensor of these weights matches the {cfg.arch} {target} "
                              f"(first keys: {list(sd)[:3]})")
    model.load_state_dict(load, strict=False)
    if skipped:
        log.info("%s: skipped %d tensors of another shape (e.g. %s): class-specific layers are "
                 "trained from scratch", path, len(skipped), skipped[:2])
    log.info("loaded %d/%d %s tensors from %s", len(load), len(own), target, path)


def is_mask_model(model) -> bool:
    """Whether ``model`` predicts instance masks (a Mask R-CNN, possibly wrapped by DDP).

    True for a torchvision model whose ROI heads have a mask branch, or for any model whose
    ``detector_config.arch`` is one of :data:`MASK_ARCHS`.

    Parameters
    ----------
    model : a detector (``nn.Module``, possibly wrapped), or any object with ``detector_config``.
    """
    m = unwrap(model) if isinstance(model, nn.Module) else model
    heads = getattr(m, "roi_heads", None)
    if heads is not None and hasattr(heads, "has_mask"):
        return bool(heads.has_mask())
    cfg = getattr(m, "detector_config", None)
    return cfg is not None and cfg.arch in MASK_ARCHS


def count_parameters(model: nn.Module) -> dict[str, int]:
    """``{"total": ..., "trainable": ...}`` parameter counts.

    Parameters
    ----------
    model : the network.
    """
    ps = list(model.parameters())
    return {"total": sum(p.numel() for p in ps), "trainable": sum(p.numel() for p in ps if p.requires_grad)}


class _LateralFineLevel(nn.Module):
    """The tiny backbone's pyramid (strides 8, 16, pool) plus a cheap stride-4 level ``"fine"`` in
    front: the stride-4 stage through a 1x1 convolution, plus the upsampled stride-8 level."""

    def __init__(self, body: nn.Sequential, out_channels: int):
        super().__init__()
        self.body = IntermediateLayerGetter(body, {"layer1": "fine", "layer2": "0", "layer3": "1"})
        self.fpn = FeaturePyramidNetwork([64, 96], out_channels, extra_blocks=LastLevelMaxPool())
        self.lateral = nn.Conv2d(32, out_channels, 1)
        self.out_channels = out_channels

    def forward(self, x):
        feats = self.body(x)
        fine = feats.pop("fine")
        pyramid = self.fpn(feats)
        out = OrderedDict(fine=self.lateral(fine) + F.interpolate(pyramid["0"], size=fine.shape[-2:], mode="nearest"))
        out.update(pyramid)
        return out


class _CoarseRPN(RegionProposalNetwork):
    """torchvision's RPN on every feature level except ``"fine"`` (its anchors stay as they were)."""

    @classmethod
    def like(cls, rpn: RegionProposalNetwork) -> "_CoarseRPN":
        """The same RPN (modules and settings) with this forward."""
        return cls(rpn.anchor_generator, rpn.head, rpn.proposal_matcher.high_threshold,
                   rpn.proposal_matcher.low_threshold, rpn.fg_bg_sampler.batch_size_per_image,
                   rpn.fg_bg_sampler.positive_fraction, dict(rpn._pre_nms_top_n), dict(rpn._post_nms_top_n),
                   rpn.nms_thresh, rpn.score_thresh)

    def forward(self, images, features, targets=None):
        coarse = type(features)((k, v) for k, v in features.items() if k != "fine")
        return super().forward(images, coarse, targets)


def build_detector(cfg: DetectorConfig) -> nn.Module:
    """A torchvision detector for ``cfg``: from scratch, or from pretrained weights the config asks
    for (``cfg.weights_path``, a local file; ``cfg.backbone_weights``, torchvision's, from torch's cache).

    The model carries its config as ``model.detector_config``. It is in train mode, on the CPU.

    Parameters
    ----------
    cfg : the :class:`DetectorConfig`.
    """
    model = _base_model(cfg)
    if cfg.backbone_weights is not None:
        _load_pretrained(model, cfg, backbone_weights_file(cfg))
    if cfg.weights_path is not None:
        _load_pretrained(model, cfg)
    if cfg.in_channels == 1:
        _to_one_channel(model)
    if cfg.freeze_backbone:
        for p in model.backbone.body.parameters():
            p.requires_grad_(False)
    model.detector_config = cfg
    n = count_parameters(model)
    log.info("built %s with %d classes: %.2fM parameters, %.2fM trainable", cfg.arch, len(cfg.class_names),
             n["total"] / 1e6, n["trainable"] / 1e6)
    return model


# ---------------------------------------------------------------------------------------------
# saving and loading
# ---------------------------------------------------------------------------------------------
def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel / DataParallel wrapper.

    Parameters
    ----------
    model : a model, wrapped or not (returned as is when not).
    """
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def save_model(model: nn.Module, cfg: DetectorConfig | None, folder, thresholds: dict | None = None,
               preprocess: Any = None, train_config: Any = None) -> Path:
    """Write the detector as a model folder (:mod:`smearlab.core.model_folder`): ``weights.pt``,
    ``config.json`` (the :class:`DetectorConfig`) and optionally ``thresholds.json`` /
    ``preprocess.json``.

    ``thresholds`` and ``preprocess`` are dicts or objects with ``to_dict()`` (e.g. a
    ``Thresholds`` set, a ``Preprocess`` pipeline). Every file is written atomically. Returns the
    folder.

    Parameters
    ----------
    model : the detector (a DDP / DataParallel wrapper is unwrapped).
    cfg : its :class:`DetectorConfig` (None: ``model.detector_config``).
    folder : the model folder (created if needed).
    thresholds : optional tuned thresholds (a ``Thresholds`` or its dict), written as
        ``thresholds.json``; checked as :func:`load_model` checks them.
    preprocess : the preprocessing pipeline, written as ``preprocess.json``; None: the model's
        own (``model.preprocess_spec``, as training and :func:`load_model` set it): a pipeline is
        part of the model (a loaded model saved again with new thresholds lost it, and every
        later prediction ran on unprocessed images).
    train_config : the training settings (a ``TrainConfig`` or its dict), written as
        ``train_config.json``: the recipe :func:`smearlab.detection.finetune.fine_tune` repeats;
        None: the model's own (``model.train_config``, set by :func:`load_model`), if any.
    """
    model = unwrap(model)
    if preprocess is None:
        preprocess = getattr(model, "preprocess_spec", None)
    if train_config is None:
        train_config = getattr(model, "train_config", None)
    cfg = cfg or getattr(model, "detector_config", None)
    if cfg is None:
        raise ValueError("save_model needs the DetectorConfig (cfg) of the model")
    if thresholds is not None:  # a file load_model would refuse is never written
        from .tune import Thresholds
        Thresholds.from_dict(thresholds.to_dict() if hasattr(thresholds, "to_dict") else thresholds,
                             Path(folder) / "thresholds.json", cfg.class_names)
    return save_model_folder(folder, "detector", model, cfg.to_dict(), class_names=cfg.class_names,
                             thresholds=thresholds, preprocess=preprocess, train_config=train_config,
                             arch=cfg.arch)


def read_config(folder) -> DetectorConfig:
    """The :class:`DetectorConfig` saved in a model folder.

    Parameters
    ----------
    folder : the model folder; :class:`DataError` naming its ``config.json`` when it is invalid.
    """
    p = Path(folder) / "config.json"
    d = read_config_json(folder)
    d.pop("kind", None)
    try:
        return DetectorConfig.from_dict(d)
    except (ValueError, TypeError) as e:
        raise DataError(p, f"invalid detector config: {e}") from e


def load_model(folder, device: "str | torch.device | None" = "auto") -> nn.Module:
    """Rebuild a saved detector in eval mode on ``device``.

    The model carries ``detector_config``, ``thresholds`` (dict or None) and ``preprocess_spec``
    (dict or None) from the folder.

    Parameters
    ----------
    folder : the model folder written by :func:`save_model`.
    device : ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``... (see
        :func:`~smearlab.core.device.resolve_device`).
    """
    folder = Path(folder)
    cfg = read_config(folder)
    saved = read_model_folder(folder, "detector")
    wpath = folder / "weights.pt"
    sd, meta = saved.state_dict, saved.meta
    saved_names = meta.get("class_names")  # read_model_folder checked them against config.json
    if saved_names is None and isinstance(meta.get("model_config"), dict):
        saved_names = meta["model_config"].get("class_names")
    build_cfg = dataclasses.replace(cfg, weights_path=None, backbone_weights=None, frozen_bn=cfg.uses_frozen_bn,
                                    trainable_backbone_layers=_trainable_layers(cfg))
    model = _base_model(build_cfg)
    if cfg.in_channels == 1:
        _to_one_channel(model)
    if cfg.freeze_backbone:
        for p in model.backbone.body.parameters():
            p.requires_grad_(False)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        msg = str(e)
        if "size mismatch" in msg and ("box_predictor" in msg or "cls_logits" in msg):
            n = _checkpoint_classes(sd, model)
            got = (f"{list(saved_names)}" if saved_names is not None
                   else f"{n} classes (names not stored)" if n else "another class list")
            raise DataError(wpath, f"checkpoint class list {got} differs from the config's "
                                   f"{list(cfg.class_names)} ({len(cfg.class_names)} classes)") from e
        raise DataError(wpath, f"weights do not fit a {cfg.arch} model built from config.json: "
                               f"{msg.splitlines()[0]} ...") from e
    model.detector_config = cfg
    model.thresholds = None
    if saved.thresholds is not None:  # checked now, not image by image at prediction; keys it
        from .tune import Thresholds  # does not know are left out (they failed every later use)
        Thresholds.from_dict(saved.thresholds, folder / "thresholds.json", cfg.class_names)
        known = {f.name for f in dataclasses.fields(Thresholds)}
        model.thresholds = {k: v for k, v in saved.thresholds.items() if k in known}
    model.preprocess_spec = None
    if saved.preprocess is not None:  # the same: a pipeline that cannot run fails here, naming its file
        from ..preprocess import as_preprocess
        try:
            as_preprocess(saved.preprocess)
        except (TypeError, ValueError, KeyError) as e:
            raise DataError(folder / "preprocess.json", f"not a usable preprocessing pipeline: {e}") from None
        model.preprocess_spec = saved.preprocess
    try:  # the recipe, kept by a re-save; prediction does not need it
        model.train_config = read_side_file(folder, "train_config.json")
    except DataError as e:
        log.warning("%s: the training recipe is not read (%s); the model predicts as saved", e.path, e.problem)
        model.train_config = None
    return model.to(resolve_device(device)).eval()


def _checkpoint_classes(sd: dict, model: nn.Module) -> int | None:
    """Object classes (background excluded) a state dict was trained for, if it can tell."""
    w = sd.get("roi_heads.box_predictor.cls_score.weight")
    if w is not None:
        return int(w.shape[0]) - 1
    w = sd.get("head.classification_head.cls_logits.weight")
    if w is not None and hasattr(model, "head"):
        a = model.anchor_generator.num_anchors_per_location()[0]
        return int(w.shape[0]) // a - 1
    return None


