"""Speed and memory benchmarks of DCCNeXt against timm's ConvFormer and ConvNeXt (not tests).

Run `python -m benchmarks.compare --help`.
"""
