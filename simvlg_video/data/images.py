"""Decode still images (JPEG, PNG, WebP) into upright uint8 RGB: from files or bytes with Pillow (in the decode
process of ``isolated.py`` when the loader sets a time limit), or a batch of JPEGs at once with torchvision on the
model's device (nvJPEG on a GPU).

Either way a picture comes out turned upright by its EXIF orientation, a picture over the pixel limit is refused
from its header before it is decoded (``limits.py``), and a failure is a reason that names the image, never a
library exception, so the loaders can skip and list it like an unreadable video.
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from simvlg_video.data.decode import VideoDecodeError
from simvlg_video.data.limits import DEFAULT_MAX_PIXELS, file_problem, pixel_problem

if TYPE_CHECKING:
    import torch  # imported where used: the decode process, whose address space is capped, never loads it

EXIF_ORIENTATION = 0x0112  # the EXIF tag that says how the stored pixels must be turned to stand upright
JPEG_MAGIC = b"\xff\xd8\xff"
_SOURCE_PREFIX = re.compile(r"^.*?\.cpp:\d+,\s*")  # torchvision's "decode_jpeg, /path/file.cpp:171, " before the reason


def _upright_rgb(source, name: str | Path, max_pixels: int | None) -> np.ndarray:
    """Pillow's decode of `source` (a path or a file object), turned upright, as a writable (H, W, 3) array; its
    size is checked against `max_pixels` from the header first."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():  # the pixel limit is ours: Pillow's bomb warning would only repeat it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                problem = pixel_problem(*image.size, max_pixels)
                if problem:
                    raise VideoDecodeError(name, f"image of {problem}")
                upright = ImageOps.exif_transpose(image).convert("RGB")  # decodes the whole file: truncation shows
    except FileNotFoundError:
        raise VideoDecodeError(name, "file not found") from None
    except UnidentifiedImageError:
        raise VideoDecodeError(name, "not a readable image (not a format Pillow knows)") from None
    except Image.DecompressionBombError as error:  # Pillow's own bound, above the default data.max_pixels
        raise VideoDecodeError(name, f"image over Pillow's pixel limit ({error})") from None
    except (OSError, SyntaxError, ValueError) as error:  # Pillow's errors for damaged data
        raise VideoDecodeError(name, f"not a readable image ({error})") from None
    return np.array(upright)  # a copy: torch tensors over read-only arrays are undefined on write


def read_image(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A still image file as uint8 RGB (H, W, 3), upright; any failure is a :class:`VideoDecodeError` naming the
    file, like a video's. A special file (a FIFO) is refused before it is opened; `max_pixels` None: no limit."""
    path = Path(path)
    problem = file_problem(path)
    if problem:
        raise VideoDecodeError(path, problem)
    return _upright_rgb(path, path, max_pixels)


def image_from_bytes(data: bytes, name: str, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """An encoded image held in memory (a tar member) as uint8 RGB (H, W, 3), upright; `name` is what an error
    names."""
    if not data:
        raise VideoDecodeError(name, "the image is empty (0 bytes)")
    return _upright_rgb(io.BytesIO(data), name, max_pixels)


def is_jpeg(data: bytes) -> bool:
    """Whether the bytes are a JPEG stream, whatever the file name says (a PNG saved as .jpg is common)."""
    return data[:3] == JPEG_MAGIC


def jpeg_header(data: bytes, name: str, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> int:
    """The EXIF orientation of a JPEG (1: stored upright), read from its header alone, which must show a size within
    `max_pixels`: the device decoder is handed only pictures whose size is known to be within the limit."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                problem = pixel_problem(*image.size, max_pixels)
                orientation = int(image.getexif().get(EXIF_ORIENTATION, 1))
    except Image.DecompressionBombError as error:
        raise VideoDecodeError(name, f"image over Pillow's pixel limit ({error})") from None
    except Exception as error:  # Pillow cannot read the header: its size is unknown
        raise VideoDecodeError(name, f"not a readable JPEG ({type(error).__name__}: {error})") from None
    if problem:
        raise VideoDecodeError(name, f"image of {problem}")
    return orientation


def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """Turn a (..., H, W) image stored with EXIF `orientation` (1-8) upright, as Pillow's `exif_transpose` does."""
    import torch

    if orientation == 2:
        return image.flip(-1)
    if orientation == 3:
        return image.flip(-2, -1)
    if orientation == 4:
        return image.flip(-2)
    if orientation == 5:
        return image.transpose(-2, -1)
    if orientation == 6:
        return torch.rot90(image, -1, (-2, -1))
    if orientation == 7:
        return image.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:
        return torch.rot90(image, 1, (-2, -1))
    return image


def _torchvision_decode(encoded: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():  # torchvision 0.29 announces a move of its decoders to TorchCodec
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.io")
        return decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)


def decode_jpegs(encoded: list[bytes], orientations: list[int], device: torch.device | str) -> list[torch.Tensor | str]:
    """Decode a batch of JPEGs in one call on `device` (nvJPEG on a GPU): each an upright uint8 (H, W, 3) tensor
    there, or the reason it failed. A batch with a damaged image is decoded again one by one to find it."""
    import torch

    device = torch.device(device)
    tensors = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in encoded]
    try:
        decoded: list[torch.Tensor | str] = list(_torchvision_decode(tensors, device))
    except RuntimeError:
        decoded = []
        for tensor in tensors:
            try:
                decoded.append(_torchvision_decode([tensor], device)[0])
            except RuntimeError as error:
                reason = _SOURCE_PREFIX.sub("", str(error).strip().splitlines()[0])
                decoded.append(f"not a readable JPEG ({reason})")
    return [
        image if isinstance(image, str) else orient(image, orientation).permute(1, 2, 0)
        for image, orientation in zip(decoded, orientations)
    ]
