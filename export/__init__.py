"""ONNX export of the dream gradient graph and the backends that run it (ONNX Runtime, TensorRT).

- ``decomp``: backward ops -> TensorRT-friendly forward ops (ConvTranspose, first-max masks)
- ``graph``: trace ``torch.func.grad`` of the objective symbolically and translate it to ONNX
- ``onnx_export``: write the file with its metadata, parity-check it, cache exports
- ``opcheck`` + ``trt_ops.json``: the TensorRT 10 operator allow-list check
- ``ort_backend`` / ``trt_backend``: ``Backend`` implementations; ``commands``: ``dreamfleet export``
"""
