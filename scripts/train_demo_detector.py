#!/usr/bin/env python3
"""Train the bundled demo detector from scratch on synthetic shapes, and export it to ONNX.

A small anchor-free detector with the YOLOv8 layout: strides 8/16/32, decoupled box and
class heads, task-aligned label assignment, GIoU box loss and BCE class loss with
IoU-aware soft targets. The exported graph outputs ``[1, 4 + nc, N]`` (cx, cy, w, h in
input pixels, then per-class sigmoid scores), exactly what Ultralytics' YOLOv8 export
gives, with its ``names``/``imgsz``/``stride`` metadata, so edged decodes it as ``yolov8``.

Training images are rendered on the fly (``edged.synthetic``) in worker processes;
nothing is downloaded. Needs the ``train`` extra (torch, CPU build is enough):

    pip install -e '.[train]'
    python scripts/train_demo_detector.py --out models/shapes-yolov8.onnx
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from edged import synthetic
from edged.inference.preprocess import letterbox

STRIDES = (8, 16, 32)


# --------------------------------------------------------------------------- model
class Conv(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, k: int = 3, s: int = 1):
        super().__init__(nn.Conv2d(c_in, c_out, k, s, k // 2, bias=False), nn.BatchNorm2d(c_out), nn.SiLU(inplace=True))


class Bottleneck(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.cv1, self.cv2 = Conv(c, c), Conv(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.cv2(self.cv1(x))


class C2f(nn.Module):
    """YOLOv8's C2f: split, a chain of bottlenecks, concatenate every intermediate output."""

    def __init__(self, c_in: int, c_out: int, n: int = 1):
        super().__init__()
        self.c = c_out // 2
        self.cv1 = Conv(c_in, 2 * self.c, 1)
        self.blocks = nn.ModuleList(Bottleneck(self.c) for _ in range(n))
        self.cv2 = Conv((2 + n) * self.c, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        for block in self.blocks:
            y.append(block(y[-1]))
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.cv1, self.cv2 = Conv(c, c // 2, 1), Conv(c * 2, c, 1)
        self.pool = nn.MaxPool2d(5, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.pool(x)
        y2 = self.pool(y1)
        return self.cv2(torch.cat([x, y1, y2, self.pool(y2)], 1))


class ShapesDetector(nn.Module):
    def __init__(self, num_classes: int, widths: tuple[int, ...] = (16, 32, 40, 56, 72), head_width: int = 32):
        super().__init__()
        w0, w1, w2, w3, w4 = widths
        self.num_classes = num_classes
        self.stem = nn.Sequential(Conv(3, w0, 3, 2), Conv(w0, w1, 3, 2), C2f(w1, w1, 1))
        self.down3 = nn.Sequential(Conv(w1, w2, 3, 2), C2f(w2, w2, 2))
        self.down4 = nn.Sequential(Conv(w2, w3, 3, 2), C2f(w3, w3, 1))
        self.down5 = nn.Sequential(Conv(w3, w4, 3, 2), C2f(w4, w4, 1), SPPF(w4))
        self.top_down4 = C2f(w4 + w3, w3)
        self.top_down3 = C2f(w3 + w2, w2)
        self.bottom_up4_conv, self.bottom_up4 = Conv(w2, w2, 3, 2), C2f(w2 + w3, w3)
        self.bottom_up5_conv, self.bottom_up5 = Conv(w3, w3, 3, 2), C2f(w3 + w4, w4)
        self.box_heads = nn.ModuleList(
            nn.Sequential(Conv(c, head_width), Conv(head_width, head_width), nn.Conv2d(head_width, 4, 1)) for c in (w2, w3, w4))
        self.cls_heads = nn.ModuleList(
            nn.Sequential(Conv(c, head_width), Conv(head_width, head_width), nn.Conv2d(head_width, num_classes, 1)) for c in (w2, w3, w4))
        for head, stride in zip(self.cls_heads, STRIDES):  # prior: ~1% objects per cell, as in YOLOv8
            nn.init.constant_(head[-1].bias, math.log(5 / num_classes / (640 / stride) ** 2))
        for head in self.box_heads:
            nn.init.constant_(head[-1].bias, 1.0)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Raw head outputs per level: box distances (B,4,H,W) and class logits (B,nc,H,W)."""
        p3 = self.down3(self.stem(x))
        p4 = self.down4(p3)
        p5 = self.down5(p4)
        t4 = self.top_down4(torch.cat([F.interpolate(p5, scale_factor=2.0, mode="nearest"), p4], 1))
        n3 = self.top_down3(torch.cat([F.interpolate(t4, scale_factor=2.0, mode="nearest"), p3], 1))
        n4 = self.bottom_up4(torch.cat([self.bottom_up4_conv(n3), t4], 1))
        n5 = self.bottom_up5(torch.cat([self.bottom_up5_conv(n4), p5], 1))
        feats = (n3, n4, n5)
        return [h(f) for h, f in zip(self.box_heads, feats)], [h(f) for h, f in zip(self.cls_heads, feats)]


def anchor_points(shapes: list[tuple[int, int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell centres in input pixels (A,2) and each cell's stride (A,1), level by level."""
    points, strides = [], []
    for (h, w), stride in zip(shapes, STRIDES):
        ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
        points.append((torch.stack([xs, ys], -1).reshape(-1, 2).float() + 0.5) * stride)
        strides.append(torch.full((h * w, 1), float(stride), device=device))
    return torch.cat(points), torch.cat(strides)


def flatten_outputs(model: ShapesDetector, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Boxes xyxy in input pixels (B,A,4), class logits (B,A,nc), anchor points (A,2)."""
    box_raw, cls_raw = model(x)
    shapes = [tuple(b.shape[2:]) for b in box_raw]
    points, strides = anchor_points(shapes, x.device)
    dist = torch.cat([b.flatten(2) for b in box_raw], 2).transpose(1, 2)
    logits = torch.cat([c.flatten(2) for c in cls_raw], 2).transpose(1, 2)
    dist = F.softplus(dist) * strides  # left, top, right, bottom distances
    boxes = torch.cat([points - dist[..., :2], points + dist[..., 2:]], -1)
    return boxes, logits, points


class ExportWrapper(nn.Module):
    """The deployable graph: ``[1, 4 + nc, N]`` with cx, cy, w, h then class scores."""

    def __init__(self, model: ShapesDetector):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        boxes, logits, _ = flatten_outputs(self.model, images)
        xy = (boxes[..., :2] + boxes[..., 2:]) / 2
        wh = boxes[..., 2:] - boxes[..., :2]
        return torch.cat([xy, wh, logits.sigmoid()], -1).transpose(1, 2)


def load_exported(model: ShapesDetector, path: Path) -> None:
    """Fine-tune from an exported model: its weights into ``model``, whose batch norms become identities (the
    export folds each into the convolution before it, and the folded convolution gets a bias). ONNX's Conv
    nodes come in the order the export traced them, which is the order the convolutions run in."""
    import onnx
    from onnx import numpy_helper

    for module in model.modules():
        if isinstance(module, Conv):
            conv = module[0]
            module[0] = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                                  bias=True)
            module[1] = nn.Identity()
    run_order: list[nn.Conv2d] = []
    hooks = [m.register_forward_hook(lambda m, _i, _o: run_order.append(m))
             for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model.eval()
        model(torch.zeros(1, 3, 64, 64))
    for hook in hooks:
        hook.remove()
    graph = onnx.load(str(path)).graph
    weights = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    convs = [node for node in graph.node if node.op_type == "Conv"]
    if len(convs) != len(run_order):
        raise ValueError(f"{path}: {len(convs)} convolutions, the model has {len(run_order)}")
    with torch.no_grad():
        for node, conv in zip(convs, run_order):
            weight, bias = weights[node.input[1]], weights[node.input[2]]
            if tuple(weight.shape) != tuple(conv.weight.shape):
                raise ValueError(f"{path}: {node.name} is {weight.shape}, the model's is {tuple(conv.weight.shape)}")
            conv.weight.copy_(torch.from_numpy(weight))
            conv.bias.copy_(torch.from_numpy(bias))


# ---------------------------------------------------------------------------- loss
def box_iou_pairwise(a: torch.Tensor, b: torch.Tensor, giou: bool = False) -> torch.Tensor:
    """IoU (or GIoU) of boxes a[..., 4] and b[..., 4] that broadcast against each other."""
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp(min=0).prod(-1)
    union = area_a + area_b - inter + 1e-7
    iou = inter / union
    if not giou:
        return iou
    hull = (torch.maximum(a[..., 2:], b[..., 2:]) - torch.minimum(a[..., :2], b[..., :2])).clamp(min=0).prod(-1) + 1e-7
    return iou - (hull - union) / hull


@torch.no_grad()
def assign_targets(scores: torch.Tensor, boxes: torch.Tensor, points: torch.Tensor, gt_boxes: torch.Tensor,
                   gt_labels: torch.Tensor, gt_mask: torch.Tensor, topk: int = 10, alpha: float = 0.5,
                   beta: float = 6.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Task-aligned assignment (TOOD / YOLOv8).

    scores (B,A,C) sigmoid, boxes (B,A,4), points (A,2), gt_boxes (B,G,4), gt_labels (B,G),
    gt_mask (B,G) bool. Returns foreground mask (B,A), target boxes (B,A,4) and
    soft class targets (B,A,C).
    """
    batch, anchors, num_classes = scores.shape
    if gt_boxes.shape[1] == 0:
        return (torch.zeros(batch, anchors, dtype=torch.bool, device=scores.device),
                torch.zeros(batch, anchors, 4, device=scores.device), torch.zeros_like(scores))
    x, y = points[:, 0], points[:, 1]
    inside = ((x[None, None] > gt_boxes[..., 0:1]) & (x[None, None] < gt_boxes[..., 2:3])
              & (y[None, None] > gt_boxes[..., 1:2]) & (y[None, None] < gt_boxes[..., 3:4]))  # (B,G,A)
    candidate = inside & gt_mask[..., None]
    overlaps = box_iou_pairwise(gt_boxes[:, :, None], boxes[:, None]).clamp(min=0) * candidate  # (B,G,A)
    class_scores = scores.gather(2, gt_labels.clamp(min=0)[:, None].expand(-1, anchors, -1)).transpose(1, 2)
    align = class_scores.pow(alpha) * overlaps.pow(beta) * candidate
    top = align.topk(min(topk, anchors), dim=-1).indices
    in_topk = torch.zeros_like(candidate).scatter_(-1, top, True) & candidate
    # An anchor claimed by several objects goes to the one it overlaps most.
    multiple = in_topk.sum(1) > 1  # (B,A)
    best = F.one_hot(overlaps.argmax(1), gt_boxes.shape[1]).transpose(1, 2).bool()
    positive = torch.where(multiple[:, None], best, in_topk)
    fg = positive.any(1)
    gt_index = positive.float().argmax(1)  # (B,A)
    target_boxes = gt_boxes.gather(1, gt_index[..., None].expand(-1, -1, 4))
    target_labels = gt_labels.gather(1, gt_index).clamp(min=0)
    # Soft targets: alignment normalised per object so its best anchor scores its best IoU.
    align = align * positive
    norm = (align * overlaps.amax(-1, keepdim=True) / (align.amax(-1, keepdim=True) + 1e-9)).amax(1)  # (B,A)
    target_scores = F.one_hot(target_labels, num_classes).float() * (norm * fg)[..., None]
    return fg, target_boxes, target_scores


def detection_loss(model: ShapesDetector, images: torch.Tensor, gt_boxes: torch.Tensor, gt_labels: torch.Tensor,
                   gt_mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    boxes, logits, points = flatten_outputs(model, images)
    fg, target_boxes, target_scores = assign_targets(logits.detach().sigmoid(), boxes.detach(), points,
                                                     gt_boxes, gt_labels, gt_mask)
    norm = target_scores.sum().clamp(min=1.0)
    cls_loss = F.binary_cross_entropy_with_logits(logits, target_scores, reduction="sum") / norm
    if fg.any():
        weight = target_scores.sum(-1)[fg]
        box_loss = ((1.0 - box_iou_pairwise(boxes[fg], target_boxes[fg], giou=True)) * weight).sum() / norm
    else:
        box_loss = boxes.sum() * 0.0
    loss = 1.0 * cls_loss + 5.0 * box_loss
    return loss, {"cls": cls_loss.item(), "box": box_loss.item()}


# ---------------------------------------------------------------------------- data
class SyntheticBatches(torch.utils.data.IterableDataset):
    """Endless batches of letterboxed synthetic scenes; each worker draws from its own seed."""

    def __init__(self, batch_size: int, sizes: tuple[int, ...], seed: int, crowded: float):
        self.batch_size, self.sizes, self.seed, self.crowded = batch_size, sizes, seed, crowded

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        cv2.setNumThreads(1)  # one process per core already
        rng = np.random.default_rng([self.seed, info.id if info else 0])
        while True:
            size = int(rng.choice(self.sizes))
            images, boxes, labels = [], [], []
            for _ in range(self.batch_size):
                image, scene_boxes, classes = synthetic.render_scene(rng, crowded=self.crowded)
                if rng.random() < 0.5:  # mirror: shapes have no handedness
                    image = image[:, ::-1]
                    scene_boxes = scene_boxes.copy()
                    scene_boxes[:, [0, 2]] = image.shape[1] - scene_boxes[:, [2, 0]]
                blob, lb = letterbox(image, (size, size))
                images.append(blob[0])
                boxes.append(scene_boxes * lb.scale + np.array([lb.pad_x, lb.pad_y] * 2, dtype=np.float32))
                labels.append(classes)
            most = max(1, max(len(b) for b in boxes))
            gt_boxes = np.zeros((self.batch_size, most, 4), np.float32)
            gt_labels = np.full((self.batch_size, most), -1, np.int64)
            for i, (b, c) in enumerate(zip(boxes, labels)):
                gt_boxes[i, :len(b)], gt_labels[i, :len(c)] = b, c
            yield (torch.from_numpy(np.stack(images)), torch.from_numpy(gt_boxes), torch.from_numpy(gt_labels))


# -------------------------------------------------------------------- export + eval
def count_flops(model: nn.Module, size: int) -> float:
    """Forward FLOPs (2 x multiply-adds of the convolutions) at a square input."""
    total = 0

    def hook(module: nn.Conv2d, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        kh, kw = module.kernel_size
        total += 2 * output.numel() * (module.in_channels // module.groups) * kh * kw

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    for h in handles:
        h.remove()
    return float(total)


def export_onnx(model: ShapesDetector, path: Path, size: int) -> None:
    import onnx

    model.eval()
    wrapper = ExportWrapper(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(wrapper, torch.zeros(1, 3, size, size), str(path), input_names=["images"], output_names=["output0"],
                      dynamic_axes={"images": {2: "height", 3: "width"}, "output0": {2: "anchors"}},
                      opset_version=17, dynamo=False)
    proto = onnx.load(str(path))
    metadata = {
        "description": "edged demo detector: circles, squares and triangles (synthetic training data)",
        "author": "edged", "license": "Apache-2.0", "task": "detect", "family": "yolov8",
        "stride": str(max(STRIDES)), "batch": "1", "imgsz": str([size, size]),
        "names": str(dict(enumerate(synthetic.LABELS))),
    }
    del proto.metadata_props[:]
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))


def evaluate_onnx(path: Path, seed: int, frames: int) -> float:
    """mAP@0.5 of the exported model on freshly rendered scenes, through edged's own detector."""
    from edged.evaluation import mean_average_precision
    from edged.inference.detector import Detector

    detector = Detector(path, providers=["cpu"], confidence=0.001, iou=0.6)
    rng = np.random.default_rng(seed)
    predictions, truths = [], []
    for _ in range(frames):
        image, boxes, classes = synthetic.render_scene(rng)
        result = detector.detect(image)
        predictions.append([(d.class_id, d.score, d.box) for d in result.detections])
        truths.append(list(zip(classes.tolist(), boxes.tolist())))
    return mean_average_precision(predictions, truths, num_classes=len(synthetic.LABELS))


# ---------------------------------------------------------------------------- main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("models/shapes-yolov8.onnx"))
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=416, help="input size of the exported model")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--workers", type=int, default=1, help="data-rendering worker processes")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda where available")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--eval-frames", type=int, default=300)
    parser.add_argument("--checkpoint", type=Path, default=None, help="resume from / save to this .pt file")
    parser.add_argument("--init", type=Path, default=None, metavar="MODEL.onnx",
                        help="fine-tune from an exported model's weights (its batch norms folded away)")
    parser.add_argument("--crowded", type=float, default=0.0,
                        help="share of training scenes whose shapes touch and hide each other (render_scene)")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = ShapesDetector(len(synthetic.LABELS))
    if args.init:
        load_exported(model, args.init)
        print(f"fine-tuning from {args.init}", flush=True)
    params = sum(p.numel() for p in model.parameters())
    print(f"model: {params / 1e6:.3f} M parameters, {count_flops(model.cpu(), args.size) / 1e9:.3f} GFLOPs at {args.size}",
          flush=True)
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=5e-4)
    warmup = max(1, min(300, args.steps // 10))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup) * (
        0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(step, args.steps) / args.steps))))
    start_step = 0
    if args.checkpoint and args.checkpoint.exists():
        state = torch.load(args.checkpoint, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        start_step = state["step"]
        print(f"resumed from {args.checkpoint} at step {start_step}", flush=True)
    sizes = (args.size - 96, args.size - 32, args.size, args.size, args.size, args.size + 64)
    batches_source = SyntheticBatches(args.batch, sizes, args.seed + start_step, args.crowded)
    loader = torch.utils.data.DataLoader(batches_source, batch_size=None,
                                         num_workers=args.workers, persistent_workers=args.workers > 0,
                                         prefetch_factor=4 if args.workers else None)
    model.train()
    started = time.time()
    running: dict[str, float] = {}
    batches = iter(loader)
    for step in range(start_step, args.steps):
        images, gt_boxes, gt_labels = (t.to(device) for t in next(batches))
        loss, parts = detection_loss(model, images, gt_boxes, gt_labels, gt_labels >= 0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        schedule.step()
        for key, value in parts.items():
            running[key] = 0.98 * running.get(key, value) + 0.02 * value
        if (step + 1) % 50 == 0 or step + 1 == args.steps:
            elapsed = time.time() - started
            rate = (step + 1 - start_step) / elapsed
            eta = (args.steps - step - 1) / rate
            print(f"step {step + 1}/{args.steps}  cls {running['cls']:.3f}  box {running['box']:.3f}  "
                  f"lr {schedule.get_last_lr()[0]:.2e}  {rate:.2f} it/s  eta {eta / 60:.0f} min", flush=True)
        if args.checkpoint and ((step + 1) % 500 == 0 or step + 1 == args.steps):
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "schedule": schedule.state_dict(), "step": step + 1}, args.checkpoint)
    minutes = (time.time() - started) / 60
    export_onnx(model.cpu(), args.out, args.size)
    size_mb = args.out.stat().st_size / 1e6
    print(f"exported {args.out}: {size_mb:.2f} MB; trained {args.steps - start_step} steps in {minutes:.1f} min",
          flush=True)
    if args.eval_frames:
        score = evaluate_onnx(args.out, seed=10_000 + args.seed, frames=args.eval_frames)
        print(f"mAP@0.5 on {args.eval_frames} fresh synthetic scenes: {score:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
