"""Adapt a SimVLG-style image captioner to video."""
