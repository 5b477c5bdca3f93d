"""W8A8 post-training quantization of TinySAM (the paper's Q-TinySAM recipe) served as real int8 ONNX.

- `export`: fp32 ONNX graphs of the image encoder and of the prompt encoder + mask decoder.
- `calibrate`: scale search (Hessian-guided objective on the final mask logits and IoU predictions) and the
  int8 QDQ graphs written with those scales (`quantize_model`).
- `runtime`: `load_quantized(dir)`, the serving path (ONNX Runtime CPU); it imports neither of the above.
- `cli`: `tinysam quantize` and `tinysam export-onnx`.

Nothing is imported here, so `import tinysam_backend.quantization.runtime` stays light.
"""
