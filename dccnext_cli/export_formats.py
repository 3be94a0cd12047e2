"""What `export` writes, named without importing torch: the CLI's --format choices and size floor come from here."""

FORMATS = ("safetensors", "timm", "onnx", "torchscript", "exported-program")
MIN_EXPORT_SIZE = 160  # px: stage 4 then has >= 25 tokens > K = 18, so K is constant in the graph
