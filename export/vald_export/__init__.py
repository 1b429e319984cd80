"""vald's export tool: diffusers folder -> ONNX graphs (FP32, FP16) + manifest.  Uses torch; not used at run time."""
