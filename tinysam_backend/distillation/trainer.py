"""Full-stage distillation trainer: a frozen teacher SAM (eval mode) teaches a TinySAM student.

One step, per rank: `batch_images` images; for each, `prompts_per_image` prompts made hard by the online
hard prompt sampler; the student is trained on L1 to the teacher's image embedding, L1 to the teacher's
decoder output tokens, the output-mask loss (weighted per prompt by the hard-mask weight when ground truth
exists), focal + dice to ground truth and the IoU-head loss. Under `torchrun` the student is wrapped in
DistributedDataParallel (gloo on CPU, nccl on GPU).

Outputs in `out`: `student_last.pth` and `student_step<N>.pth` (state dicts in the official key layout,
readable by `load_model` and by the official code), `trainer_state.pt` (optimizer, scheduler, step; for
`resume`), `metrics.jsonl` (one line per step), and the teacher-embedding cache.

BatchNorm (the TinyViT convolutions): with a checkpoint-initialised student the BatchNorm statistics are
frozen (eval mode; the affine parameters still train), because a step sees one or two images and batch
statistics of so few images are noisy and drift away from the statistics serving uses; a student from
scratch has no statistics to keep, so its BatchNorm runs in train mode (under DDP the running statistics are
averaged over ranks after every step). `freeze_batchnorm` overrides this.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from ..checkpoint import load_state_dict_checked, load_torch_model
from ..config import DEFAULT_MAX_IMAGE_PIXELS
from ..masks import MASK_THRESHOLD
from ..modeling import Sam, build_sam
from . import losses
from .data import DistillSample, ImageFolderDataset
from .hard_prompt_sampler import Prompts, boxes_from_masks, hard_prompt_sampler, sample_points_in
from .teacher_cache import TeacherEmbeddingCache

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "student_last.pth"
TRAINER_STATE = "trainer_state.pt"
METRICS = "metrics.jsonl"
LOSS_TERMS = ("embedding", "tokens", "mask_output", "gt_mask", "iou")


@dataclass(frozen=True)
class LossWeights:
    embedding: float = 1.0
    tokens: float = 1.0
    mask_output: float = 1.0
    gt_mask: float = 1.0
    iou: float = 1.0


@dataclass(frozen=True)
class DistillConfig:
    """Everything a distillation run reads. `teacher`/`student_init` are checkpoint paths (None for
    `student_init` = from scratch); `*_variant` None = detected from the checkpoint keys."""

    images: Path
    out: Path
    teacher: Path | None = None
    student_init: Path | None = None
    annotations: Path | None = None
    teacher_variant: str | None = None
    student_variant: str = "vit_t"
    steps: int = 1000
    batch_images: int = 1
    prompts_per_image: int = 64
    max_rounds: int = 9
    box_probability: float = 0.5
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 0
    grad_clip: float = 1.0
    weights: LossWeights = field(default_factory=LossWeights)
    freeze_batchnorm: bool | None = None
    seed: int = 0
    save_every: int = 500
    teacher_cache: Path | None = None
    resume: bool = False
    stop_at: int | None = None
    progress: bool = True
    device: str | None = None
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS

    def validate(self) -> None:
        checks = [("steps", self.steps, 1), ("batch_images", self.batch_images, 1),
                  ("prompts_per_image", self.prompts_per_image, 1), ("max_rounds", self.max_rounds, 0),
                  ("save_every", self.save_every, 1), ("warmup_steps", self.warmup_steps, 0)]
        for name, value, low in checks:
            if value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        if self.stop_at is not None and not 1 <= self.stop_at <= self.steps:
            raise ValueError(f"stop_at must be in [1, steps={self.steps}], got {self.stop_at}")
        if not 0.0 <= self.box_probability <= 1.0:
            raise ValueError(f"box_probability must be in [0, 1], got {self.box_probability}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


# --------------------------------------------------------------------------------------------- distributed

@dataclass(frozen=True)
class _Dist:
    rank: int
    world_size: int
    device: torch.device

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _setup_distributed(device: str | None) -> _Dist:
    """Join the process group when launched by torchrun (env:// rendezvous); else a single process."""
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for, but this PyTorch sees no CUDA device "
                         f"(torch {torch.__version__}); use device='cpu' or install a CUDA build of torch")
    if dist.is_torchelastic_launched() and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    if use_cuda:
        dev = torch.device("cuda", rank % torch.cuda.device_count())
        torch.cuda.set_device(dev)
    else:
        dev = torch.device(device or "cpu")
    return _Dist(rank, world, dev)


# --------------------------------------------------------------------------------------------- models

def set_batchnorm_frozen(model: nn.Module, frozen: bool) -> None:
    """Put every BatchNorm (and the TinyViT conv+BN blocks that fold it) in eval (frozen) or train mode."""
    from ..modeling.image_encoder_tinyvit import ConvBN

    for m in model.modules():
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, ConvBN)):
            m.train(not frozen and model.training)


def _trainable(student: Sam) -> list[nn.Parameter]:
    """All student parameters except the unused classification head of TinyViT (kept only for the layout)."""
    enc = student.image_encoder
    for name in ("head", "norm_head"):
        if hasattr(enc, name):
            getattr(enc, name).requires_grad_(False)
    return [p for p in student.parameters() if p.requires_grad]


class _StudentStep(nn.Module):
    """The student's differentiable work of one step, in one forward (what DDP wraps).

    Encodes the images, lets `make_prompts(b, decode)` build hard prompts for image b with the student's
    no-grad decoder, then decodes those prompts with gradients (returning the output tokens).
    """

    def __init__(self, student: Sam) -> None:
        super().__init__()
        self.student = student

    def forward(self, images: torch.Tensor, make_prompts):
        emb = self.student.encode_image(images)
        pe = self.student.prompt_encoder.get_dense_pe()
        outs = []
        for b in range(images.shape[0]):
            fixed = emb[b:b + 1].detach()

            def decode(p: Prompts, fixed=fixed):
                with torch.no_grad():
                    return self.student.decode(fixed, p.points, p.boxes, p.mask_input)

            prompts = make_prompts(b, decode)
            sparse, dense = self.student.prompt_encoder(prompts.points, prompts.boxes, prompts.mask_input)
            low, iou, tokens = self.student.mask_decoder(emb[b:b + 1], pe, sparse, dense, return_tokens=True)
            outs.append((prompts, low, iou, tokens))
        return emb, outs


def _teacher_decode(teacher: Sam, emb: torch.Tensor, prompts: Prompts, tokens: bool = False):
    with torch.no_grad():
        sparse, dense = teacher.prompt_encoder(prompts.points, prompts.boxes, prompts.mask_input)
        return teacher.mask_decoder(emb, teacher.prompt_encoder.get_dense_pe(), sparse, dense, return_tokens=tokens)


def _best(low: torch.Tensor, iou: torch.Tensor) -> torch.Tensor:
    """The most confident of the 3 masks per prompt: (P, 3, L, L), (P, 3) → (P, L, L) logits."""
    return low[torch.arange(low.shape[0], device=low.device), iou.argmax(dim=1)]


# --------------------------------------------------------------------------------------------- one step

def _initial_prompts(sample: DistillSample, teacher: Sam, t_emb: torch.Tensor, n: int, use_box: bool,
                     gen: torch.Generator, device: torch.device) -> tuple[Prompts, torch.Tensor, bool]:
    """First prompt and target of each of the n prompts of one image → (prompts, targets (n, L, L), has_gt)."""
    size = sample.valid.shape[-1]
    scale = teacher.image_size / size
    if sample.gt.shape[0] > 0:
        pick = torch.randint(sample.gt.shape[0], (n,), generator=gen, device=device)
        targets = sample.gt.to(device)[pick]
        has_gt = True
    else:
        region = sample.valid.to(device)[None].expand(n, -1, -1)
        coords, _ = sample_points_in(region, scale, gen)
        first = Prompts(coords[:, None], torch.ones((n, 1), device=device))
        low, iou = _teacher_decode(teacher, t_emb, first)
        targets = _best(low, iou) > MASK_THRESHOLD
        has_gt = False
        if not use_box:
            return first, targets, has_gt
    if use_box:
        return Prompts(boxes=boxes_from_masks(targets, scale, gen)), targets, has_gt
    coords, _ = sample_points_in(targets, scale, gen)
    return Prompts(coords[:, None], torch.ones((n, 1), device=device)), targets, has_gt


def step_generator(cfg: DistillConfig, step: int, rank: int, device: torch.device) -> torch.Generator:
    """Randomness of one step on one rank is a function of (seed, step, rank): resuming replays it exactly."""
    g = torch.Generator(device=device)
    g.manual_seed((cfg.seed * 1_000_003 + step * 7919 + rank * 104_729) % (2**63))
    return g


def _draw_rounds(max_rounds: int, gen: torch.Generator, device: torch.device) -> int:
    """Hard-prompt rounds of a step: uniform in 0 … max_rounds, the first draw of the step's generator."""
    return int(torch.randint(max_rounds + 1, (1,), generator=gen, device=device))


def rounds_of_step(cfg: DistillConfig, step: int, rank: int = 0, device: torch.device | str = "cpu") -> int:
    """The number of hard-prompt rounds step `step` (0-based) runs on `rank` under `cfg` (a function of its seed)."""
    device = torch.device(device)
    return _draw_rounds(cfg.max_rounds, step_generator(cfg, step, rank, device), device)


def _distill_step(step_module: nn.Module, teacher: Sam, samples: list[DistillSample],
                  teacher_embs: torch.Tensor, cfg: DistillConfig, gen: torch.Generator, device: torch.device
                  ) -> tuple[torch.Tensor, dict[str, float]]:
    n = cfg.prompts_per_image
    rounds = _draw_rounds(cfg.max_rounds, gen, device)
    use_box = bool(torch.rand((1,), generator=gen, device=device) < cfg.box_probability)
    scale = teacher.image_size / samples[0].valid.shape[-1]
    targets: dict[int, tuple[torch.Tensor, bool]] = {}

    def make_prompts(b: int, decode) -> Prompts:
        first, tgt, has_gt = _initial_prompts(samples[b], teacher, teacher_embs[b:b + 1], n, use_box, gen, device)
        targets[b] = (tgt, has_gt)
        return hard_prompt_sampler(decode, tgt, first, rounds, scale, gen)

    images = torch.stack([s.image for s in samples]).to(device)
    s_emb, outs = step_module(images, make_prompts)

    w = cfg.weights
    terms = {k: torch.zeros((), device=device) for k in LOSS_TERMS}
    terms["embedding"] = losses.embedding_loss(s_emb, teacher_embs)
    agreement, hard_weight, n_gt = 0.0, 0.0, 0
    for b, (prompts, low, iou, tokens) in enumerate(outs):
        t_low, t_iou, t_tokens = _teacher_decode(teacher, teacher_embs[b:b + 1], prompts, tokens=True)
        tgt, has_gt = targets[b]
        weight = None
        if has_gt:
            weight = losses.hard_mask_weight(_best(t_low, t_iou) > MASK_THRESHOLD,
                                            _best(low.detach(), iou.detach()) > MASK_THRESHOLD, tgt)
            hard_weight += float(weight.mean())
            terms["gt_mask"] = terms["gt_mask"] + losses.gt_mask_loss(low, tgt)
            n_gt += 1
        terms["tokens"] = terms["tokens"] + losses.token_loss(tokens, t_tokens)
        terms["mask_output"] = terms["mask_output"] + losses.mask_output_loss(low, t_low, weight)
        terms["iou"] = terms["iou"] + losses.iou_head_loss(iou, low, tgt)
        agreement += float(losses.mask_iou(low.detach() > MASK_THRESHOLD, t_low > MASK_THRESHOLD).mean())
    nb = len(outs)
    for k in ("tokens", "mask_output", "iou"):
        terms[k] = terms[k] / nb
    if n_gt:
        terms["gt_mask"] = terms["gt_mask"] / n_gt
    total = sum(getattr(w, k) * terms[k] for k in LOSS_TERMS)
    metrics = {k: float(v.detach()) for k, v in terms.items()}
    metrics.update(total=float(total.detach()), mask_iou_vs_teacher=agreement / nb, rounds=float(rounds),
                   box=float(use_box), hard_mask_weight=hard_weight / n_gt if n_gt else float("nan"))
    return total, metrics


# --------------------------------------------------------------------------------------------- run

def _lr_lambda(cfg: DistillConfig):
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return f


def _save_atomic(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _average_batchnorm_statistics(model: nn.Module, d: _Dist) -> None:
    """Average BatchNorm running statistics over ranks (each rank saw different images); keeps ranks identical."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            for buf in (m.running_mean, m.running_var):
                dist.all_reduce(buf)
                buf.div_(d.world_size)


def _reduce_metrics(metrics: dict[str, float], d: _Dist) -> dict[str, float]:
    if not d.enabled:
        return metrics
    keys = sorted(metrics)
    t = torch.tensor([metrics[k] for k in keys], dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return dict(zip(keys, (t / d.world_size).tolist()))


def _load_student(cfg: DistillConfig) -> Sam:
    if cfg.student_init is None:
        torch.manual_seed(cfg.seed)  # identical scratch weights on every rank
        return build_sam(cfg.student_variant)
    return load_torch_model(cfg.student_init, variant=cfg.student_variant)


def _prepare_models(cfg: DistillConfig, device: torch.device, teacher: Sam | None,
                    student: Sam | None) -> tuple[Sam, Sam]:
    """The frozen teacher (eval mode, no gradients) and the student, both on `device`."""
    if teacher is None:
        if cfg.teacher is None:
            raise ValueError("a teacher is required: give config.teacher (a checkpoint) or a teacher model")
        teacher = load_torch_model(cfg.teacher, variant=cfg.teacher_variant)
    if not isinstance(teacher, Sam):
        raise TypeError(f"teacher must be an fp32 Sam model, got {type(teacher).__name__}")
    teacher = teacher.to(device).eval().requires_grad_(False)
    student = (student if student is not None else _load_student(cfg)).to(device)
    if student.image_size != teacher.image_size:
        raise ValueError(f"student and teacher image sizes differ: {student.image_size} vs {teacher.image_size}")
    return teacher, student


def _resume(cfg: DistillConfig, out: Path, student: Sam, device: torch.device) -> dict | None:
    """With `resume` and a saved run in `out`: load the last student weights, return the trainer state."""
    if not (cfg.resume and (out / TRAINER_STATE).exists()):
        return None
    state = torch.load(out / TRAINER_STATE, map_location=device, weights_only=True)
    sd = torch.load(out / LAST_CHECKPOINT, map_location=device, weights_only=True)
    load_state_dict_checked(student, sd, str(out / LAST_CHECKPOINT))
    logger.info("resuming from step %d", int(state["step"]))
    return state


@dataclass
class _Optimization:
    """What one optimisation step needs: the (DDP-wrapped) step module, its parameters, optimiser, schedule."""

    step_module: nn.Module
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    frozen_bn: bool

    @classmethod
    def build(cls, cfg: DistillConfig, student: Sam, d: _Dist, state: dict | None) -> _Optimization:
        frozen_bn = cfg.freeze_batchnorm if cfg.freeze_batchnorm is not None else cfg.student_init is not None
        student.train()
        set_batchnorm_frozen(student, frozen_bn)
        params = _trainable(student)
        step_module: nn.Module = _StudentStep(student)
        if d.enabled:
            step_module = nn.parallel.DistributedDataParallel(
                step_module, device_ids=[d.device.index] if d.device.type == "cuda" else None,
                find_unused_parameters=True)  # box / mask-prompt embeddings are used only on some steps
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg))
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
        return cls(step_module, params, optimizer, scheduler, frozen_bn)

    def step(self, loss: torch.Tensor, cfg: DistillConfig, student: Sam, d: _Dist) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        if d.enabled and not self.frozen_bn:
            _average_batchnorm_statistics(student, d)


def _schedule(sampler, batch_images: int, start: int, end: int):
    """(step, epoch, dataset indices) for steps start..end-1; epochs reshuffle through the distributed sampler."""
    per_epoch = math.ceil(len(sampler) / batch_images)
    order: list[int] = []
    epoch = -1
    for step in range(start, end):
        if step // per_epoch != epoch:
            epoch = step // per_epoch
            sampler.set_epoch(epoch)
            order = list(sampler)
        k = step % per_epoch
        yield step, epoch, order[k * batch_images:(k + 1) * batch_images]


def save_student(student: Sam, path: Path) -> None:
    """The student's state dict in the official key layout (what `load_model` and the official code read)."""
    _save_atomic(student.state_dict(), path)


def _save_outputs(out: Path, done: int, end: int, cfg: DistillConfig, student: Sam, opt: _Optimization) -> None:
    if done % cfg.save_every != 0 and done != end:
        return
    save_student(student, out / LAST_CHECKPOINT)
    if done % cfg.save_every == 0:
        save_student(student, out / f"student_step{done:07d}.pth")
    _save_atomic({"step": done, "optimizer": opt.optimizer.state_dict(), "scheduler": opt.scheduler.state_dict(),
                  "config": json.loads(json.dumps(asdict(cfg), default=str))}, out / TRAINER_STATE)


def distill(config: DistillConfig, teacher: Sam | None = None, student: Sam | None = None) -> Path:
    """Run distillation; returns the path of the last student checkpoint.

    `teacher` / `student` may be given as models (Python API); otherwise they are loaded from
    `config.teacher` / `config.student_init` (None = scratch). Under torchrun every rank calls this.
    """
    cfg = config
    cfg.validate()
    d = _setup_distributed(cfg.device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    teacher, student = _prepare_models(cfg, d.device, teacher, student)
    state = _resume(cfg, out, student, d.device)
    start = int(state["step"]) if state is not None else 0

    dataset = ImageFolderDataset(cfg.images, student.image_size, cfg.annotations, cfg.max_image_pixels)
    cache = TeacherEmbeddingCache(cfg.teacher_cache or out / "teacher_embeddings", teacher)
    cache.fill(dataset, d.rank, d.world_size)
    if d.enabled:
        dist.barrier()

    opt = _Optimization.build(cfg, student, d, state)
    sampler = torch.utils.data.DistributedSampler(range(len(dataset)), num_replicas=d.world_size, rank=d.rank,
                                                  shuffle=True, seed=cfg.seed, drop_last=False)
    end = cfg.steps if cfg.stop_at is None else cfg.stop_at
    from tqdm.auto import tqdm

    with contextlib.ExitStack() as files:
        metrics_file = files.enter_context(open(out / METRICS, "a")) if d.rank == 0 else None
        bar = files.enter_context(tqdm(total=cfg.steps, initial=start, desc="distill",
                                       disable=not (cfg.progress and d.rank == 0)))
        for step, epoch, indices in _schedule(sampler, cfg.batch_images, start, end):
            samples = [dataset[i] for i in indices]
            t_embs = torch.stack([cache.load(s.key) for s in samples]).to(d.device)
            lr = opt.scheduler.get_last_lr()[0]
            t0 = time.perf_counter()
            loss, metrics = _distill_step(opt.step_module, teacher, samples, t_embs, cfg,
                                          step_generator(cfg, step, d.rank, d.device), d.device)
            opt.step(loss, cfg, student, d)
            if d.device.type == "cuda":
                torch.cuda.synchronize(d.device)  # time the step, not the kernel launches
            metrics["seconds"] = time.perf_counter() - t0
            metrics = _reduce_metrics(metrics, d)
            if d.rank == 0:
                metrics_file.write(json.dumps({"step": step + 1, "epoch": epoch, "lr": lr, **metrics}) + "\n")
                metrics_file.flush()
                bar.set_postfix(loss=f"{metrics['total']:.4f}", iou=f"{metrics['mask_iou_vs_teacher']:.3f}")
                _save_outputs(out, step + 1, end, cfg, student, opt)
            bar.update(1)
    if d.enabled:
        dist.barrier()
    student.eval()
    return out / LAST_CHECKPOINT


def evaluate_agreement(student: Sam, teacher: Sam, dataset, prompts_per_image: int = 16, max_rounds: int = 9,
                       seed: int = 0) -> float:
    """Mean IoU between student and teacher masks (all 3 outputs), eval mode, on fixed prompts of the kind
    training uses but independent of the student: a point in the image, then `i % (max_rounds + 1)` rounds
    of hard prompt sampling driven by the teacher against its own first mask. Deterministic in `seed`."""
    was_training = student.training
    student.eval()
    teacher.eval()
    g = torch.Generator().manual_seed(seed)
    n = prompts_per_image
    total = 0.0
    with torch.no_grad():
        for i in range(len(dataset)):
            s = dataset[i]
            scale = student.image_size / s.valid.shape[-1]
            t_emb = teacher.encode_image(s.image[None])
            s_emb = student.encode_image(s.image[None])
            coords, _ = sample_points_in(s.valid[None].expand(n, -1, -1), scale, g)
            first = Prompts(coords[:, None], torch.ones((n, 1)))
            low, iou = teacher.decode(t_emb, first.points)
            target = _best(low, iou) > MASK_THRESHOLD
            for j in range(n):
                p = hard_prompt_sampler(lambda q, t_emb=t_emb: teacher.decode(t_emb, q.points, q.boxes, q.mask_input),
                                        target[j:j + 1], Prompts(first.coords[j:j + 1], first.labels[j:j + 1]),
                                        j % (max_rounds + 1), scale, g)
                s_low, _ = student.decode(s_emb, p.points, p.boxes, p.mask_input)
                t_low, _ = teacher.decode(t_emb, p.points, p.boxes, p.mask_input)
                total += float(losses.mask_iou(s_low > MASK_THRESHOLD, t_low > MASK_THRESHOLD).mean()) / n
    student.train(was_training)
    return total / len(dataset)


__all__ = ["DistillConfig", "LossWeights", "distill", "evaluate_agreement", "save_student", "set_batchnorm_frozen"]
