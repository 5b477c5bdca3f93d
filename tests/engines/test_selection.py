"""The engine choice from given host facts (pure): what "auto" picks, what is refused and how it is said."""

from __future__ import annotations

import pytest

from tinysam_backend.config import Settings
from tinysam_backend.engines.selection import (
    EngineError,
    HostFacts,
    cap_cpu_flags,
    choose,
    parse_cpu_flags,
    parse_device,
)

ZEN4 = frozenset(["sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16"])
SAPPHIRE_RAPIDS = ZEN4 | {"amx_tile", "amx_int8", "amx_bf16", "avx512_fp16"}
ICE_LAKE = frozenset(["avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni"])
AVX2 = frozenset(["sse4_2", "avx", "avx2", "fma"])


def facts(flags, cuda=0, openvino=True, onnxruntime=True, cap=None) -> HostFacts:
    return HostFacts(cap_cpu_flags(flags, cap), cuda, openvino, onnxruntime, cap)


def test_parse_cpu_flags_reads_the_flags_line():
    text = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu avx2 avx512_bf16\nbugs\t: none\n"
    assert parse_cpu_flags(text) == {"fpu", "avx2", "avx512_bf16"}
    assert parse_cpu_flags("processor : 0\n") == frozenset()


def test_isa_cap_drops_the_flags_above_it():
    assert cap_cpu_flags(SAPPHIRE_RAPIDS, "AVX2") == {"sse4_2", "avx", "avx2", "fma"}
    assert cap_cpu_flags(SAPPHIRE_RAPIDS, "avx512_core_vnni") == ZEN4 - {"avx512_bf16"}
    assert cap_cpu_flags(ZEN4, None) == ZEN4 and cap_cpu_flags(ZEN4, "ALL") == ZEN4
    with pytest.raises(EngineError, match="AVX512_CORE_BF16.*got 'AVX9'"):
        cap_cpu_flags(ZEN4, "AVX9")


@pytest.mark.parametrize(("flags", "cap", "engine", "precision"), [
    (ZEN4, None, "openvino", "bf16"),
    (SAPPHIRE_RAPIDS, None, "openvino", "bf16"),
    (ICE_LAKE, None, "openvino", "fp32"),
    (AVX2, None, "openvino", "fp32"),
    (ZEN4, "AVX2", "openvino", "fp32"),  # ONEDNN_MAX_CPU_ISA=AVX2 emulation chooses as a real AVX2 host
])
def test_auto_on_cpu_from_a_state_dict(flags, cap, engine, precision):
    c = choose("auto", "auto", "auto", facts(flags, cap=cap))
    assert (c.device, c.engine, c.precision) == ("cpu", engine, precision)
    assert c.reasons  # says why


def test_auto_without_openvino_is_torch_fp32():
    c = choose(None, None, None, facts(ZEN4, openvino=False))
    assert (c.device, c.engine, c.precision) == ("cpu", "torch", "fp32")
    assert "OpenVINO not installed" in c.as_dict()["reason"]


def test_auto_with_cuda_is_torch_fp16_on_the_gpu_and_cpu_can_still_be_asked():
    c = choose("auto", "auto", "auto", facts(AVX2, cuda=2))
    assert (c.device, c.engine, c.precision) == ("cuda:0", "torch", "fp16")
    assert choose("cuda:1", "auto", "fp32", facts(AVX2, cuda=2)).device == "cuda:1"
    c = choose("cpu", "auto", "auto", facts(ZEN4, cuda=1))
    assert (c.device, c.engine, c.precision) == ("cpu", "openvino", "bf16")


def test_int8_artifact_goes_to_openvino_with_int8_dot_products_else_onnxruntime():
    assert choose("auto", "auto", "auto", facts(ICE_LAKE), "int8").engine == "openvino"
    assert choose("auto", "auto", "auto", facts(ZEN4, cap="AVX2"), "int8").engine == "onnxruntime"
    assert choose("auto", "auto", "auto", facts(ICE_LAKE, openvino=False), "int8").engine == "onnxruntime"
    c = choose("auto", "openvino", "auto", facts(AVX2), "int8")
    assert (c.engine, c.precision) == ("openvino", "int8")
    # An artifact is CPU-only, even on a CUDA host, unless the GPU is asked for explicitly (then: an error).
    assert choose("auto", "auto", "auto", facts(ZEN4, cuda=1), "int8").device == "cpu"
    with pytest.raises(EngineError, match="needs a state dict"):
        choose("cuda", "auto", "auto", facts(ZEN4, cuda=1), "int8")


@pytest.mark.parametrize(("args", "artifact", "host", "message"), [
    (("cuda", "auto", "auto"), None, facts(AVX2), "no CUDA device"),
    (("cuda:2", "auto", "auto"), None, facts(AVX2, cuda=2), "2 CUDA device"),
    (("gpu", "auto", "auto"), None, facts(AVX2), "'cpu', 'cuda' or 'cuda:N', got 'gpu'"),
    (("auto", "tensorrt", "auto"), None, facts(AVX2), "engine must be one of"),
    (("auto", "auto", "int4"), None, facts(AVX2), "precision must be one of"),
    (("cpu", "auto", "bf16"), None, facts(AVX2), "native bf16.*avx2"),
    (("cpu", "auto", "bf16"), None, facts(ZEN4, cap="AVX2"), "capped at AVX2"),
    (("cpu", "auto", "fp16"), None, facts(ZEN4), "runs on CUDA only"),
    (("auto", "auto", "int8"), None, facts(ZEN4), "tinysam quantize"),
    (("auto", "openvino", "auto"), None, facts(AVX2, openvino=False), "openvino package is not installed"),
    (("cuda", "openvino", "auto"), None, facts(AVX2, cuda=1), "runs on the CPU here"),
    (("cuda", "auto", "int8"), None, facts(AVX2, cuda=1), "int8' runs on the CPU"),
    (("auto", "auto", "fp32"), "int8", facts(AVX2), "artifact's image encoder is int8"),
    (("auto", "torch", "auto"), "int8", facts(AVX2), "needs a state dict"),
])
def test_refusals_name_what_was_asked_and_what_the_host_has(args, artifact, host, message):
    with pytest.raises(EngineError, match=message):
        choose(*args, host, artifact)


def test_explicit_choices_are_kept():
    c = choose("cpu", "torch", "bf16", facts(ZEN4))
    assert (c.engine, c.precision) == ("torch", "bf16")
    c = choose("cpu", "onnxruntime", "fp32", facts(ZEN4))
    assert (c.engine, c.precision) == ("onnxruntime", "fp32")
    assert parse_device("CUDA", 1) == "cuda:0" and parse_device("auto", 0) is None


def test_settings_read_the_three_words_and_the_isa_cap():
    s = Settings.from_env({"TINYSAM_DEVICE": "CPU", "TINYSAM_ENGINE": "openvino", "TINYSAM_PRECISION": " bf16 ",
                           "ONEDNN_MAX_CPU_ISA": "avx2"})
    assert (s.device, s.engine, s.precision, s.max_cpu_isa) == ("cpu", "openvino", "bf16", "AVX2")
    s = Settings.from_env({"TINYSAM_MAX_CPU_ISA": "AVX512_CORE_VNNI", "ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert s.max_cpu_isa == "AVX512_CORE_VNNI"  # our own override wins over oneDNN's variable
    assert (Settings.from_env({}).device, Settings.from_env({}).max_cpu_isa) == ("auto", None)
