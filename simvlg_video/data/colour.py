"""YUV -> RGB the way FFmpeg's swscale does it by default, as batched tensor ops (on the GPU for NVDEC output).

The hardware decoder's own RGB output uses other coefficients than the CPU decoders, so the same indices would
give different pixels depending on the backend. Its native NV12 output is converted here with the matrix swscale
picks (BT.709 for streams tagged BT.709, BT.601 otherwise; limited range unless the stream says full range) and
swscale's chroma placement (each chroma sample covers a 2x2 block), so that it matches decord and PyAV
(`tests/test_nvdec.py` checks the PSNR on a GPU).
"""

from __future__ import annotations

import torch

# Luma weights (Kr, Kb) of each matrix; Kg = 1 - Kr - Kb.
MATRICES = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722)}


def nv12_to_rgb(
    nv12: torch.Tensor, height: int, width: int, matrix: str = "bt601", full_range: bool = False
) -> torch.Tensor:
    """NV12 frames (..., height + ceil(height / 2), width) uint8 -> RGB (..., height, width, 3) uint8.

    NV12 is the luma plane followed by one plane of interleaved U, V samples at half resolution both ways.
    """
    if matrix not in MATRICES:
        raise ValueError(f"unknown colour matrix {matrix!r}; expected one of {sorted(MATRICES)}")
    chroma_rows = (height + 1) // 2
    if nv12.dtype != torch.uint8 or nv12.shape[-2:] != (height + chroma_rows, width):
        raise ValueError(
            f"expected uint8 NV12 of shape (..., {height + chroma_rows}, {width}) for a {width}x{height}"
            f" frame, got {nv12.dtype} {tuple(nv12.shape)}"
        )
    if width % 2:
        raise ValueError(f"NV12 needs an even frame width, got {width}")
    luma = nv12[..., :height, :].float()
    chroma = nv12[..., height:, :].reshape(*nv12.shape[:-2], chroma_rows, width // 2, 2).float()
    chroma = chroma.repeat_interleave(2, dim=-3)[..., :height, :, :].repeat_interleave(2, dim=-2)
    u, v = chroma[..., 0] - 128.0, chroma[..., 1] - 128.0
    if not full_range:  # limited ("TV") range: luma 16-235, chroma 16-240
        luma = (luma - 16.0) * (255.0 / 219.0)
        u, v = u * (255.0 / 224.0), v * (255.0 / 224.0)
    kr, kb = MATRICES[matrix]
    kg = 1.0 - kr - kb
    red = luma + 2.0 * (1.0 - kr) * v
    green = luma - (2.0 * kb * (1.0 - kb) / kg) * u - (2.0 * kr * (1.0 - kr) / kg) * v
    blue = luma + 2.0 * (1.0 - kb) * u
    return torch.stack([red, green, blue], dim=-1).round_().clamp_(0, 255).to(torch.uint8)
