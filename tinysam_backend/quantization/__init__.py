"""W8A8 post-training quantization of TinySAM (the paper's Q-TinySAM recipe) served as real int8 ONNX.

- `export`: fp32 ONNX graphs of the image encoder and of the prompt encoder + mask decoder; `prompts`: the
  decoder graph's prompt layout.
- `calibrate`: the recipe and `calibrate_scales` (Hessian-guided objective on the final mask logits and IoU
  predictions), built from `points` (what is quantized, by ONNX node), `calibration_data` (images, prompts),
  `recorder` (sampled activations and sensitivities of real forwards), `scale_search` and `fake_quant`.
- `qdq`: the fp32 graphs rewritten with Q/DQ for those scales; `artifact`: `quantize_model`, the whole directory.
- `runtime`: `load_quantized(dir)`, the serving path (ONNX Runtime CPU); it imports none of the above but
  `prompts`.
- `cli`: `tinysam quantize` and `tinysam export-onnx`.

Nothing is imported here, so `import tinysam_backend.quantization.runtime` stays light.
"""
