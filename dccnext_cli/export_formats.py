"""What `export` writes, named without importing torch: the CLI's --format choices and size floor come from here."""

FORMATS = ("safetensors", "timm", "hub", "onnx", "torchscript", "exported-program")
GRAPH_FORMATS = ("onnx", "torchscript", "exported-program")
FOLDER_FORMATS = ("timm", "hub")
MIN_EXPORT_SIZE = 160  # px, graph formats: stage 4 then has >= 25 tokens > K = 18, so K is constant in the graph
