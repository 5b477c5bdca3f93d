"""Inference engines behind `load_model(path, device=, engine=, precision=)`.

- `selection`: which device / engine / precision, from the user's words and the host's facts (pure, tested);
- `engine_sam`: `EngineSam`, the `Sam` whose `encode_image` runs on the engine (all weights stay in PyTorch);
  the torch engine is it on CPU or CUDA, the image encoder optionally under fp16/bf16 autocast;
- `openvino_engine`: the image encoder compiled by OpenVINO for the CPU (fp32, bf16, int8 QDQ graphs);
- ONNX Runtime: `quantization.runtime` (int8 / fp32 artifacts, and fp32 graphs of a state dict);
- `graph_cache`: graphs built from a state dict once, cached beside the download cache.

Every engine returns a model with the contract `Predictor` uses (`modeling.SamModel`: `image_size`, `preprocess`,
`encode_image`, `decode`); from a state dict it is an `EngineSam`, from an artifact a `HybridSam` (or ONNX Runtime's `OnnxSam` when
its decoder graph is asked for): a `Sam` whose prompt side is the fp32 PyTorch decoder, so clicks go through the
exact low-rank decoder whatever ran the encoder. Each model carries `engine_info` (a
JSON-able dict: device, engine, precision, the reason for the choice, CPU flags, graph path), which the log and the
Label Studio `/health` report.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from .selection import EngineChoice, EngineError, HostFacts, choose

if TYPE_CHECKING:
    from ..modeling.contract import SamModel

logger = logging.getLogger(__name__)

__all__ = ["EngineChoice", "EngineError", "HostFacts", "add_engine_arguments", "build_model", "choose",
           "engine_env", "engine_options"]

_ENV = {"device": "TINYSAM_DEVICE", "engine": "TINYSAM_ENGINE", "precision": "TINYSAM_PRECISION"}


def add_engine_arguments(parser) -> None:
    """`--device`, `--engine`, `--precision` on a command (default: TINYSAM_DEVICE / _ENGINE / _PRECISION, "auto")."""
    from .selection import ENGINES, PRECISIONS

    parser.add_argument("--device", help="auto (default), cpu, cuda or cuda:N (default: TINYSAM_DEVICE)")
    parser.add_argument("--engine", choices=ENGINES, help="image-encoder engine (default: TINYSAM_ENGINE, auto)")
    parser.add_argument("--precision", choices=PRECISIONS, help="image-encoder precision (default: "
                        "TINYSAM_PRECISION, auto)")


def engine_options(args) -> dict[str, str]:
    """The `load_model` keywords given on the command line (absent ones fall back to the settings)."""
    return {k: getattr(args, k) for k in _ENV if getattr(args, k, None)}


def engine_env(args) -> dict[str, str]:
    """The same choices as environment variables, for processes started by a command (`tinysam serve` workers)."""
    return {_ENV[k]: v for k, v in engine_options(args).items()}


def _versions(kind: str) -> dict[str, str]:
    import torch

    from .. import __version__

    versions = {"tinysam_backend": __version__, "torch": torch.__version__.split("+")[0]}
    if kind == "openvino":
        from .openvino_engine import openvino_version

        versions["openvino"] = openvino_version()
    return versions


def encoder_graph(checkpoint: Path, sam, kind: str, cache_dir: Path) -> Path:
    """The fp32 image-encoder graph of a state dict, from the cache or built into it: kind "onnx" → the ONNX file,
    "openvino" → the IR's .xml."""
    from .graph_cache import cached_graph, file_sha256, graph_key

    digest = file_sha256(checkpoint)
    versions = _versions(kind)
    key = graph_key(digest, sam.variant, kind, versions)

    def build(out: Path) -> None:
        import tempfile

        from ..quantization.export import ENCODER_FILE, export_image_encoder

        if kind == "onnx":
            export_image_encoder(sam, out / ENCODER_FILE)
            return
        from .openvino_engine import onnx_to_ir

        with tempfile.TemporaryDirectory(dir=out) as tmp:
            onnx_to_ir(export_image_encoder(sam, Path(tmp) / ENCODER_FILE), out)

    directory = cached_graph(cache_dir / "engines", key, build,
                             {"checkpoint": str(checkpoint), "checkpoint_sha256": digest, "variant": sam.variant,
                              "kind": kind, **versions})
    from ..quantization.export import ENCODER_FILE
    from .openvino_engine import IR_FILE

    return directory / (IR_FILE if kind == "openvino" else ENCODER_FILE)


def build_model(path: Path, choice: EngineChoice, facts: HostFacts, settings, variant: str | None = None,
                artifact: bool = False) -> SamModel:
    """The model for `choice` (see `selection.choose`), with `engine_info` set. `path`: a state dict file, or an
    ONNX artifact directory when `artifact`."""
    info = {**choice.as_dict(), "cpu_flags": facts.flags_summary(), "max_cpu_isa": facts.max_isa}
    if artifact:
        model = _artifact_model(path, choice, settings, info)
    else:
        import torch

        from ..checkpoint import load_torch_state
        from .engine_sam import EngineSam

        sam = load_torch_state(path, variant)
        if choice.engine == "torch":
            autocast = None if choice.precision == "fp32" else choice.precision
            model = EngineSam(sam, autocast=autocast).to(torch.device(choice.device))
        elif choice.engine == "openvino":
            from .openvino_engine import OpenVINOImageEncoder, compile_encoder

            graph = encoder_graph(path, sam, "openvino", settings.cache_dir)
            compiled = compile_encoder(graph, choice.precision, settings.torch_threads,
                                       settings.cache_dir / "engines" / "openvino_kernels")
            model = EngineSam(sam, OpenVINOImageEncoder(compiled, sam.image_size, choice.precision))
            info["graph"] = str(graph)
        else:  # onnxruntime, fp32 graph of the state dict
            from ..quantization.runtime import OnnxImageEncoder, create_session, session_options

            graph = encoder_graph(path, sam, "onnx", settings.cache_dir)
            session = create_session(graph, session_options(settings.torch_threads))
            model = EngineSam(sam, OnnxImageEncoder(session, sam.image_size))
            info["graph"] = str(graph)
        model = model.eval()
    model.engine_info = info
    logger.info("TinySAM engine: %s on %s, image encoder %s (%s)", info["engine"], info["device"],
                info["precision"], info["reason"])
    return model


def _artifact_model(directory: Path, choice: EngineChoice, settings, info: dict) -> SamModel:
    from ..quantization.runtime import ArtifactInfo, load_quantized, load_with_encoder

    if choice.engine == "onnxruntime":
        model = load_quantized(directory, settings.torch_threads, decoder=settings.quantized_decoder)
        info["graph"] = str(directory / model.info.encoder_file)
        return model
    from .openvino_engine import OpenVINOImageEncoder, compile_encoder

    art, meta = ArtifactInfo.read(directory)
    name = str(meta.get("encoder_openvino") or art.encoder_file)  # older artifacts: the ONNX Runtime graph
    if not meta.get("encoder_openvino"):
        logger.warning("%s has no OpenVINO encoder graph (written before it existed): OpenVINO runs the ONNX Runtime "
                       "graph, whose attention products it computes in fp32; re-run `tinysam quantize` for the "
                       "graph OpenVINO runs in int8", directory)
    if Path(name).name != name or not name.endswith(".onnx"):
        raise EngineError(f"{directory}: encoder_openvino must be a plain *.onnx name in the directory, got {name!r}")
    graph = directory / name
    compiled = compile_encoder(graph, choice.precision, settings.torch_threads,
                               settings.cache_dir / "engines" / "openvino_kernels")
    info["graph"] = str(graph)
    return load_with_encoder(directory, OpenVINOImageEncoder(compiled, art.image_size, choice.precision))
