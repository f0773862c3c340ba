"""Denoising backbones (DnCNN, RDN, ADFNet) built by name."""

__all__: list[str] = []
