"""Distillation on CPU with tiny random models (image_size 256) and synthetic images.

Teacher: `tiny_test_t` seeded 0, fixed; student: `tiny_test_t` from another seed. One thread per process
(a distillation step is many small ops; thread oversubscription on a shared 2-core machine slows it ~10×).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from distill_synthetic import make_synthetic_dataset

from tinysam_backend.checkpoint import load_model
from tinysam_backend.distillation import (
    DistillConfig,
    Prompts,
    distill,
    evaluate_agreement,
    hard_prompt_sampler,
    losses,
    save_student,
)
from tinysam_backend.distillation.__main__ import main as distill_main
from tinysam_backend.distillation.data import ImageFolderDataset, mask_to_low_res, valid_region
from tinysam_backend.distillation.hard_prompt_sampler import boxes_from_masks, sample_error_points, sample_points_in
from tinysam_backend.modeling import build_sam

HERE = Path(__file__).resolve().parent


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), n=6, size=(192, 256))


def _teacher():
    torch.manual_seed(0)
    return build_sam("tiny_test_t")


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------ hard prompt sampler

def test_error_points_fall_in_error_region():
    g = torch.Generator().manual_seed(0)
    p, size, scale = 64, 16, 4.0
    pred = torch.rand((p, size, size), generator=g) < 0.3
    target = torch.rand((p, size, size), generator=g) < 0.3
    target[0] = pred[0]  # no error: must give an ignored point
    coords, labels = sample_error_points(pred, target, scale, g)
    col, row = (coords[:, 0] / scale).floor().long(), (coords[:, 1] / scale).floor().long()
    idx = torch.arange(p)
    assert labels[0] == -1
    error = (pred ^ target)[idx, row, col]
    assert error[1:].all()
    assert (labels[1:] == target[idx, row, col][1:].long()).all()  # 1 = missed foreground, 0 = false positive
    assert {0, 1} <= set(labels[1:].tolist())


def test_points_in_region_and_boxes_cover_masks():
    g = torch.Generator().manual_seed(1)
    masks = torch.zeros((3, 16, 16), dtype=torch.bool)
    masks[0, 2:5, 3:9] = True
    masks[1, 10, 10] = True
    coords, found = sample_points_in(masks, 4.0, g)
    assert found[:2].all() and not found[2]
    for i in range(2):
        assert masks[i, int(coords[i, 1] // 4), int(coords[i, 0] // 4)]
    boxes = boxes_from_masks(masks, 4.0, g, noise=0.0)
    assert boxes[0].tolist() == [12.0, 8.0, 36.0, 20.0]
    assert boxes[2].tolist() == [0.0, 0.0, 0.0, 0.0]


def test_hard_prompt_sampler_points_follow_the_students_errors():
    student = _teacher()
    emb = student.encode_image(torch.randn(1, 3, 256, 256))
    g = torch.Generator().manual_seed(2)
    n = 8
    target = torch.zeros((n, 64, 64), dtype=torch.bool)
    target[:, 10:40, 20:50] = True
    seen = []

    def decode(p: Prompts):
        with torch.no_grad():
            low, iou = student.decode(emb, p.points, p.boxes, p.mask_input)
        seen.append((low, iou))
        return low, iou

    coords, _ = sample_points_in(target, 4.0, g)
    first = Prompts(coords[:, None], torch.ones((n, 1)))
    out = hard_prompt_sampler(decode, target, first, rounds=4, scale=4.0, generator=g)
    assert out.coords.shape == (n, 5, 2) and out.labels.shape == (n, 5)
    idx = torch.arange(n)
    for r, (low, iou) in enumerate(seen):
        best = low[idx, iou.argmax(1)]
        pt, lab = out.coords[:, r + 1], out.labels[:, r + 1]
        row, col = (pt[:, 1] // 4).long(), (pt[:, 0] // 4).long()
        has_error = ((best > 0) ^ target).flatten(1).any(1)
        assert ((best > 0) ^ target)[idx, row, col][has_error].all()
        assert (lab[~has_error] == -1).all()
    last_low, last_iou = seen[-1]
    assert torch.equal(out.mask_input[:, 0], last_low[idx, last_iou.argmax(1)])


# ------------------------------------------------------------------------------------ losses and data

def test_hard_mask_weight_favours_prompts_where_the_student_trails():
    gt = torch.zeros((2, 8, 8), dtype=torch.bool)
    gt[:, :4] = True
    teacher = gt.clone()
    student = gt.clone()
    student[1, :2] = False  # student worse on prompt 1
    h = losses.hard_mask_weight(teacher, student, gt)
    assert h[0] == pytest.approx(0.5, abs=1e-4) and h[1] > 0.6


def test_gt_masks_on_the_low_res_grid():
    mask = np.zeros((100, 200), dtype=bool)
    mask[:50, :100] = True  # top-left quarter of the image
    low = mask_to_low_res(mask, 256)  # input frame 128×256 → low-res 64×64, image in rows 0..31
    assert low.shape == (64, 64)
    assert low[:16, :32].all() and not low[16:].any() and not low[:, 32:].any()
    valid = valid_region((128, 256), 256)
    assert valid[:32].all() and not valid[32:].any()


# ------------------------------------------------------------------------------------ training runs

@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    """40 steps without ground truth (teacher masks are the targets)."""
    images, _ = data
    out = tmp_path_factory.mktemp("run")
    teacher = _teacher()
    encodes = []
    teacher.image_encoder.register_forward_hook(lambda *a: encodes.append(1))
    torch.manual_seed(1)
    student = build_sam("tiny_test_t")
    ds = ImageFolderDataset(images, 256)
    before = evaluate_agreement(student, teacher, ds)
    n_eval_encodes = len(encodes)
    cfg = DistillConfig(images=images, out=out, steps=40, prompts_per_image=16, lr=3e-3, progress=False,
                        freeze_batchnorm=True, save_every=20)
    last = distill(cfg, teacher=teacher, student=student)
    train_encodes = len(encodes) - n_eval_encodes
    after = evaluate_agreement(student, teacher, ds)
    return {"out": out, "last": last, "student": student, "before": before, "after": after,
            "train_encodes": train_encodes, "n_images": len(ds)}


def test_distillation_lowers_every_loss_term(run):
    rows = _metrics(run["out"])
    assert [r["step"] for r in rows] == list(range(1, 41))
    for term in ("embedding", "tokens", "mask_output", "iou", "total"):
        first = np.mean([r[term] for r in rows[:5]])
        last = np.mean([r[term] for r in rows[-5:]])
        assert last < 0.85 * first, f"{term}: first 5 steps {first:.4f}, last 5 {last:.4f}"


def test_distillation_raises_student_teacher_mask_iou(run):
    assert run["after"] > run["before"] + 0.1, (run["before"], run["after"])


def test_teacher_encodes_each_image_once(run):
    assert run["train_encodes"] == run["n_images"]  # 40 steps = ~7 epochs over 6 images


def test_checkpoints_load_in_the_official_layout(run):
    assert sorted(p.name for p in run["out"].glob("student*.pth")) == [
        "student_last.pth", "student_step0000020.pth", "student_step0000040.pth"]
    loaded = load_model(run["last"], variant="tiny_test_t")
    for k, v in run["student"].state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_ground_truth_terms(data, tmp_path):
    images, ann = data
    torch.manual_seed(1)
    cfg = DistillConfig(images=images, out=tmp_path, annotations=ann, steps=16, prompts_per_image=16, lr=3e-3,
                        progress=False, freeze_batchnorm=True, max_rounds=3)
    distill(cfg, teacher=_teacher(), student=build_sam("tiny_test_t"))
    rows = _metrics(tmp_path)
    assert all(0.0 < r["hard_mask_weight"] <= 1.0 for r in rows)
    assert np.mean([r["gt_mask"] for r in rows[-4:]]) < 0.85 * np.mean([r["gt_mask"] for r in rows[:4]])


def test_cli_resume_replays_an_uninterrupted_run(data, tmp_path):
    images, _ = data
    teacher_path = tmp_path / "teacher.pth"
    torch.save(_teacher().state_dict(), teacher_path)
    common = ["--teacher", str(teacher_path), "--teacher-variant", "tiny_test_t", "--student-init", "scratch",
              "--student-variant", "tiny_test_t", "--images", str(images), "--prompts-per-image", "8",
              "--max-rounds", "3", "--lr", "3e-3", "--no-progress", "--teacher-cache", str(tmp_path / "cache")]
    assert distill_main(common + ["--out", str(tmp_path / "a"), "--steps", "4"]) == 0
    assert distill_main(common + ["--out", str(tmp_path / "b"), "--steps", "4", "--stop-at", "2"]) == 0
    assert torch.load(tmp_path / "b" / "trainer_state.pt", weights_only=True)["step"] == 2
    assert distill_main(common + ["--out", str(tmp_path / "b"), "--steps", "4", "--resume"]) == 0
    assert [r["step"] for r in _metrics(tmp_path / "b")] == [1, 2, 3, 4]
    a = torch.load(tmp_path / "a" / "student_last.pth", weights_only=True)
    b = torch.load(tmp_path / "b" / "student_last.pth", weights_only=True)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)


def test_torchrun_two_processes_keep_identical_weights(data, tmp_path):
    images, _ = data
    teacher_path = tmp_path / "teacher.pth"
    torch.save(_teacher().state_dict(), teacher_path)
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(HERE.parents[1]), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(HERE / "ddp_worker.py"), str(images), str(teacher_path), str(out), "3"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r0 = torch.load(out / "rank0.pth", weights_only=True)
    r1 = torch.load(out / "rank1.pth", weights_only=True)
    assert len(_metrics(out)) == 3
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    torch.manual_seed(100)
    init = build_sam("tiny_test_t").state_dict()
    assert not torch.equal(r0["mask_decoder.iou_token.weight"], init["mask_decoder.iou_token.weight"])


def test_student_checkpoint_keys_are_the_official_layout(parity_checkpoint, tmp_path):
    """What the trainer writes for a vit_t student (`save_student`, the writer of student_last.pth and
    student_step*.pth) has exactly the keys, shapes and dtypes of the official TinySAM file."""
    path = tmp_path / "student.pth"
    save_student(build_sam("vit_t"), path)
    saved = torch.load(path, map_location="cpu", weights_only=True)
    official = torch.load(parity_checkpoint, map_location="cpu", weights_only=True)
    assert {k: (tuple(v.shape), v.dtype) for k, v in saved.items()} == \
        {k: (tuple(v.shape), v.dtype) for k, v in official.items()}


def test_cuda_device_without_cuda_is_an_error(data, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    images, _ = data
    cfg = DistillConfig(images=images, out=tmp_path, steps=1, device="cuda", progress=False)
    with pytest.raises(ValueError, match="no CUDA device"):
        distill(cfg, teacher=_teacher(), student=build_sam("tiny_test_t"))
