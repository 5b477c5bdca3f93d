"""Which device, engine and precision run the model: the user's three words, checked against the host's facts.

`choose(...)` is a pure function of what was asked (`device`, `engine`, `precision`, each possibly "auto"), what
the checkpoint is (a state dict, or an ONNX artifact directory of precision "int8"/"fp32") and `HostFacts` (CUDA
devices, CPU flags from /proc/cpuinfo capped at an ISA level, which runtimes are installed). It returns an
`EngineChoice` with the reasons, or raises `EngineError` naming what was asked and what the host has: nothing falls
back silently (a request for CUDA on a host without it is an error, not a CPU run).

What "auto" picks, and the measurements behind it (benchmarks/engine_bench.py, README "Inference engines"):
- device: CUDA when torch sees a CUDA device, else the CPU;
- on CUDA: the torch engine, image encoder under fp16 autocast (prompt side fp32, exact low-rank decoder);
- on the CPU, from a state dict: OpenVINO when installed (its fp32 graph runs the encoder about 2x faster than
  PyTorch eager here), in bf16 when the CPU has native bf16 (`avx512_bf16` or `amx_bf16`; 4-5x PyTorch), else fp32.
  On AVX2 CPUs without int8 dot products OpenVINO's int8 kernels are slower than its fp32 ones (measured), and int8
  needs a calibration step (`tinysam quantize`), so "auto" never picks int8 for a state dict;
- on the CPU, from an int8 artifact: OpenVINO when the CPU has int8 dot products (`avx512_vnni`, `avx_vnni`,
  `amx_int8`), else ONNX Runtime (its u8 x s8 kernels are the faster int8 path on plain AVX2);
- otherwise the torch engine in fp32.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import TinySAMError

DEVICE_WORDS = ("auto", "cpu", "cuda")
ENGINES = ("auto", "torch", "openvino", "onnxruntime")
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")

# oneDNN's ISA names (`ONEDNN_MAX_CPU_ISA`) in increasing order, and the level each CPU flag needs.
ISA_LEVELS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
              "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16", "ALL")
_FLAG_LEVEL = {"avx": "AVX", "avx2": "AVX2", "fma": "AVX2", "avx_vnni": "AVX2_VNNI", "avx_vnni_int8": "AVX2_VNNI_2",
               "avx512_vnni": "AVX512_CORE_VNNI", "avx512_bf16": "AVX512_CORE_BF16",
               "avx512_fp16": "AVX512_CORE_FP16", "amx_tile": "AVX512_CORE_AMX", "amx_int8": "AVX512_CORE_AMX",
               "amx_bf16": "AVX512_CORE_AMX", "amx_fp16": "AVX512_CORE_AMX_FP16"}
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
REPORTED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "avx512_fp16")


class EngineError(TinySAMError, ValueError):
    """A device / engine / precision that cannot run here; the message says what was asked and what the host has."""


def _flag_level(flag: str) -> str | None:
    if flag in _FLAG_LEVEL:
        return _FLAG_LEVEL[flag]
    if flag.startswith("avx512"):
        return "AVX512_CORE"
    if flag.startswith("amx"):
        return "AVX512_CORE_AMX"
    return None


def cap_cpu_flags(flags: frozenset[str] | set[str], max_isa: str | None) -> frozenset[str]:
    """Drop the flags above `max_isa` (a oneDNN ISA name, case-insensitive; None or "ALL" keeps every flag)."""
    if max_isa is None:
        return frozenset(flags)
    cap = max_isa.strip().upper()
    if cap in ("", "ALL", "DEFAULT"):
        return frozenset(flags)
    if cap not in ISA_LEVELS:
        raise EngineError(f"CPU ISA cap must be one of {ISA_LEVELS}, got {max_isa!r}")
    top = ISA_LEVELS.index(cap)
    return frozenset(f for f in flags if (lvl := _flag_level(f)) is None or ISA_LEVELS.index(lvl) <= top)


def parse_cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The `flags` line of /proc/cpuinfo text → set of flags (empty when there is none, e.g. on ARM)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def read_cpu_flags(path: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    try:
        return parse_cpu_flags(Path(path).read_text())
    except OSError:
        return frozenset()


@dataclass(frozen=True)
class HostFacts:
    """What the choice depends on. cpu_flags: already capped at `max_isa`."""

    cpu_flags: frozenset[str] = frozenset()
    cuda_devices: int = 0
    openvino: bool = False
    onnxruntime: bool = False
    max_isa: str | None = None

    @property
    def bf16(self) -> bool:
        return any(f in self.cpu_flags for f in BF16_FLAGS)

    @property
    def int8_dot(self) -> bool:
        return any(f in self.cpu_flags for f in INT8_DOT_FLAGS)

    def flags_summary(self) -> list[str]:
        return [f for f in REPORTED_FLAGS if f in self.cpu_flags]

    @classmethod
    def detect(cls, max_isa: str | None = None) -> HostFacts:
        """This host: /proc/cpuinfo flags capped at `max_isa`, torch's CUDA device count, installed runtimes."""
        import torch

        return cls(cpu_flags=cap_cpu_flags(read_cpu_flags(), max_isa),
                   cuda_devices=torch.cuda.device_count() if torch.cuda.is_available() else 0,
                   openvino=importlib.util.find_spec("openvino") is not None,
                   onnxruntime=importlib.util.find_spec("onnxruntime") is not None, max_isa=max_isa)


@dataclass(frozen=True)
class EngineChoice:
    device: str          # "cpu" or "cuda:N"
    engine: str          # "torch", "openvino" or "onnxruntime"
    precision: str       # precision of the image encoder: "fp32", "bf16", "fp16" or "int8"
    reasons: tuple[str, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict:
        return {"device": self.device, "engine": self.engine, "precision": self.precision,
                "reason": "; ".join(self.reasons)}


def _normalise(word: str | None, allowed: tuple[str, ...], what: str) -> str:
    w = (word or "auto").strip().lower()
    if w not in allowed:
        raise EngineError(f"{what} must be one of {allowed}, got {word!r}")
    return w


def parse_device(device: str | None, cuda_devices: int) -> str | None:
    """"auto" → None (decided later); "cpu"; "cuda" / "cuda:N" → "cuda:N" when that device exists, else EngineError."""
    d = (device or "auto").strip().lower()
    if d in ("auto", "cpu"):
        return None if d == "auto" else "cpu"
    if d == "cuda" or d.startswith("cuda:"):
        index_text = d.partition(":")[2] or "0"
        if not index_text.isdigit():
            raise EngineError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
        index = int(index_text)
        if cuda_devices == 0:
            raise EngineError(f"device {device!r} asked for, but torch sees no CUDA device on this host (torch built "
                              "without CUDA, or no GPU / driver); use device='cpu' or 'auto'")
        if index >= cuda_devices:
            raise EngineError(f"device {device!r} asked for, but this host has {cuda_devices} CUDA device(s) "
                              f"(cuda:0 … cuda:{cuda_devices - 1})")
        return f"cuda:{index}"
    raise EngineError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def choose(device: str | None, engine: str | None, precision: str | None, facts: HostFacts,
           artifact_precision: str | None = None) -> EngineChoice:
    """The engine for one model (module docstring). artifact_precision: None for a state dict, else the precision
    of the ONNX artifact directory's image encoder ("int8" or "fp32"), which the choice cannot change."""
    engine = _normalise(engine, ENGINES, "engine")
    precision = _normalise(precision, PRECISIONS, "precision")
    dev = parse_device(device, facts.cuda_devices)
    reasons: list[str] = [f"asked device={(device or 'auto').strip().lower()}, engine={engine}, precision={precision}"]
    if dev is None:
        if facts.cuda_devices and artifact_precision is None and engine in ("auto", "torch"):
            dev = "cuda:0"
            reasons.append("CUDA device present")
        else:
            dev = "cpu"
            reasons.append("no CUDA device" if not facts.cuda_devices else
                           "an ONNX artifact or a CPU engine was asked for")
    flags = ", ".join(facts.flags_summary()) or "none of " + ", ".join(REPORTED_FLAGS)
    cap = f" (capped at {facts.max_isa})" if facts.max_isa else ""

    if dev.startswith("cuda"):
        if artifact_precision is not None:
            raise EngineError(f"device {dev} needs a state dict (torch engine); got an ONNX artifact "
                              f"({artifact_precision}), which runs on the CPU engines")
        if engine not in ("auto", "torch"):
            raise EngineError(f"engine {engine!r} runs on the CPU here; on {dev} use engine='torch' (or 'auto')")
        if precision == "int8":
            raise EngineError("precision 'int8' runs on the CPU engines (an artifact of `tinysam quantize`); on CUDA "
                              "use 'fp16', 'bf16' or 'fp32'")
        if precision == "auto":
            precision = "fp16"
            reasons.append("image encoder under fp16 autocast on CUDA (prompt side fp32)")
        return EngineChoice(dev, "torch", precision, tuple(reasons))

    # ----- CPU
    if artifact_precision is not None:
        if precision not in ("auto", artifact_precision):
            raise EngineError(f"precision {precision!r} asked for, but the artifact's image encoder is "
                              f"{artifact_precision}; load the fp32 state dict for other precisions")
        precision = artifact_precision
        if engine == "torch":
            raise EngineError("engine 'torch' needs a state dict; an ONNX artifact runs on 'openvino' or "
                              "'onnxruntime'")
        if engine == "auto":
            if facts.openvino and (artifact_precision != "int8" or facts.int8_dot):
                engine = "openvino"
                reasons.append("OpenVINO installed" + (" and the CPU has int8 dot products"
                                                       if artifact_precision == "int8" else ""))
            elif facts.onnxruntime:
                engine = "onnxruntime"
                reasons.append("ONNX Runtime: u8 x s8 int8 kernels are the faster int8 path without int8 dot "
                               f"products (CPU flags: {flags}{cap})" if artifact_precision == "int8" else
                               "OpenVINO not installed")
            else:
                raise EngineError("an ONNX artifact needs OpenVINO or ONNX Runtime; neither is installed "
                                  "(pip install 'tinysam-backend[openvino]')")
    else:
        if precision == "int8":
            raise EngineError("precision 'int8' needs the int8 artifact of `tinysam quantize --checkpoint CKPT "
                              "--out DIR`; load DIR (a state dict is fp32)")
        if engine == "auto":
            if facts.openvino and precision in ("auto", "fp32", "bf16"):
                engine = "openvino"
                reasons.append("OpenVINO installed (fastest CPU engine measured for the image encoder)")
            else:
                engine = "torch"
                reasons.append("OpenVINO not installed" if not facts.openvino else f"precision {precision}")
    if engine == "openvino" and not facts.openvino:
        raise EngineError("engine 'openvino' asked for, but the openvino package is not installed "
                          "(pip install 'tinysam-backend[openvino]')")
    if engine == "onnxruntime" and not facts.onnxruntime:
        raise EngineError("engine 'onnxruntime' asked for, but onnxruntime is not installed "
                          "(pip install 'tinysam-backend[quant]')")
    if precision == "fp16":
        raise EngineError(f"precision 'fp16' runs on CUDA only; the CPU engines run fp32, bf16 (CPU flags "
                          f"{'/'.join(BF16_FLAGS)}) or an int8 artifact; this host's CPU flags: {flags}{cap}")
    if precision == "bf16":
        if not facts.bf16:
            raise EngineError(f"precision 'bf16' needs a CPU with native bf16 ({' or '.join(BF16_FLAGS)}); this "
                              f"host's CPU flags: {flags}{cap}")
        if engine == "onnxruntime":
            raise EngineError("engine 'onnxruntime' runs fp32 or an int8 artifact; use engine 'openvino' or "
                              "'torch' for bf16")
    if precision == "auto":
        if engine == "openvino" and facts.bf16:
            precision = "bf16"
            reasons.append(f"CPU has native bf16 ({flags}{cap})")
        else:
            precision = "fp32"
            reasons.append(f"fp32: CPU without native bf16 ({flags}{cap})" if not facts.bf16 else "fp32")
    return EngineChoice("cpu", engine, precision, tuple(reasons))
