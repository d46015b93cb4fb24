"""Decoding one image file to a small uint8 array, reduced to the target size as early as the format allows.

Order of operations, and why:
1. `Image.open` reads the header only: size, mode, format. Our own size rule (`check_size`) replaces PIL's
   decompression-bomb check, which refuses any image above `Image.MAX_IMAGE_PIXELS` (~89.5 Mpx) whatever it is.
2. JPEG: `draft` asks libjpeg for a DCT-scaled decode (1/2, 1/4 or 1/8) no smaller than the resize needs, so a
   4000x3000 photo bound for 64 px decodes at 500x375: memory and time fall by up to 64x.
3. Anything still at least twice the target: `reduce` (an exact box filter by an integer factor) right after the
   decode, so what follows works on a small image.
4. EXIF orientation (`ImageOps.exif_transpose`), so phone photos stand up the way they are shown.
5. Modes to L or RGB: palette through RGBA (its transparency kept), 16-bit and 32-bit integer scaled to 8 bits
   (PIL's convert would saturate them), CMYK through PIL's conversion, alpha composited onto `background`.
6. Shorter side to N with PIL's antialiased bilinear filter, then the centre N x N crop: the same arithmetic as
   torchvision's `resize(img, N)` + `center_crop(img, N)` on PIL images, so a plain PNG gives identical pixels.

An image PIL would need more than MAX_DECODE_BYTES to hold (or with a side above MAX_SIDE) goes to libvips
instead, through pyvips when it is installed (`pip install pyvips pyvips-binary`, the `images` extra):
`thumbnail` shrinks on load and streams a PNG's rows through the resize, so memory stays bounded whatever the
pixel count. Its resampling differs slightly from PIL's (a mean absolute difference of about 1 level in the
test), which is why it is used only where PIL cannot go. Without pyvips such an image is refused as too large,
with the command that installs it; it is never called corrupt.
"""
from __future__ import annotations

import importlib.util
import logging
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from PIL import Image, ImageColor, ImageOps

GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
# Bytes per pixel of a full decode, by mode (what the decoder allocates before any reduction).
_BYTES = {"1": 1, "L": 1, "P": 1, "LA": 4, "La": 4, "PA": 4, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2,
          "RGB": 4, "YCbCr": 4, "RGBA": 4, "RGBa": 4, "CMYK": 4, "I": 4, "F": 4}
# An image above PIL's bomb limit is decoded when what its decoder must allocate (after JPEG draft scaling)
# stays within this many bytes, one such image at a time across all workers; beyond it, refused.
MAX_DECODE_BYTES = 1 << 30
MAX_SIDE = 65535  # JPEG's hard limit; PIL decodes up to this many pixels a side, libvips (pyvips) beyond
INSTALL_PYVIPS = "pip install pyvips pyvips-binary"
_VIPS: object = False  # the pyvips module once looked for (None: not installed or no libvips)
# True in the decoding pool's workers, where libvips runs. Anywhere else it runs in a forked child, so the
# process that forks the workers never loads it: a child forked after libvips has run hangs at its first call.
IN_WORKER = False


class BadImage(Exception):
    """A file that is not a usable image; the message is one line saying why."""


TOO_LARGE = "too large: "  # how the reason of an image refused for its size (not its bytes) begins


def parse_background(text: str) -> tuple[int, int, int]:
    """'white', 'black', '#rrggbb', 'R,G,B' ... -> an RGB triple (raises ValueError when it is none)."""
    text = text.strip()
    if "," in text:
        rgb = tuple(int(v) for v in text.split(","))
        if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
            raise ValueError(text)
        return rgb  # type: ignore[return-value]
    return ImageColor.getrgb(text)[:3]


def open_image(path: str) -> Image.Image:
    """Image.open with PIL's bomb check off (check_size applies ours); the file stays open until closed."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        return Image.open(path)
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def header(path: str) -> tuple[int, int, str]:
    """(width, height, mode) from the file's header, width and height as displayed (EXIF rotation applied).

    Reads only the header (a PNG's EXIF is looked at only when it precedes the pixels, so nothing is decoded).
    """
    try:
        with open_image(path) as img:
            w, h = img.size
            exif = img.getexif() if img.format == "JPEG" or "exif" in img.info else {}
            if exif.get(0x0112, 1) in (5, 6, 7, 8):  # the four orientations that turn the image by 90 degrees
                w, h = h, w
            return w, h, img.mode
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, struct.error...
        raise BadImage(_reason(e)) from None


def _reason(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def resized_size(w: int, h: int, n: int) -> tuple[int, int]:
    """(W, H) with the shorter side n and the aspect kept, truncated as torchvision's resize does."""
    if w <= h:
        return n, int(n * h / w)
    return int(n * w / h), n


def decode_bytes(w: int, h: int, mode: str, scale: int) -> int:
    """What PIL allocates to decode a w x h image of `mode` at the JPEG draft `scale`."""
    return -(-w // scale) * -(-h // scale) * _BYTES.get(mode, 4)


def check_size(w: int, h: int, mode: str, scale: int) -> bool:
    """Whether PIL may decode a w x h image: False when it needs libvips (a side above MAX_SIDE, or more than
    MAX_DECODE_BYTES at the JPEG draft `scale`). Raises BadImage for a size no real image has."""
    if w < 1 or h < 1:
        raise BadImage(f"implausible size {w}x{h} in its header")
    return w <= MAX_SIDE and h <= MAX_SIDE and decode_bytes(w, h, mode, scale) <= MAX_DECODE_BYTES


def have_pyvips() -> bool:
    """Whether images above the budget can go to libvips (outside a worker, looked for without importing it)."""
    if _VIPS is not False or IN_WORKER:
        return pyvips() is not None
    return importlib.util.find_spec("pyvips") is not None


def pyvips():
    """The pyvips module (one thread, no operation cache: the pool uses the cores), or None without it."""
    global _VIPS
    if _VIPS is False:
        try:
            import pyvips as vips

            logging.getLogger("pyvips").setLevel(logging.ERROR)  # its warnings become our one-line errors
            vips.cache_set_max(0)
            vips.concurrency_set(1)
            _VIPS = vips
        except (ImportError, OSError):  # not installed, or installed without a libvips it can load
            _VIPS = None
    return _VIPS


def _too_large(w: int, h: int, mode: str, scale: int) -> BadImage:
    need = decode_bytes(w, h, mode, scale) / 2**30
    return BadImage(f"{TOO_LARGE}{w}x{h} px would need {need:.1f} GiB to decode with PIL, above its "
                    f"{MAX_DECODE_BYTES / 2**30:g} GiB limit; too large to decode without pyvips, which streams it "
                    f"in bounded memory: {INSTALL_PYVIPS}")


def decode_large(source, size: int, gray: bool, background: tuple[int, int, int]) -> np.ndarray:
    """An image of any pixel count (a path or a binary file object) -> uint8 (C, size, size) through libvips:
    shrink-on-load, rows streamed. Outside a pool worker, in a forked child (see IN_WORKER)."""
    if not isinstance(source, (str, os.PathLike)):
        source = source.read()  # a file object (a tar member): its bytes
    if IN_WORKER or sys.modules.get("pyvips") or "fork" not in multiprocessing.get_all_start_methods():
        return _vips_decode(source, size, gray, background)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as child:
        return child.submit(_vips_decode, source, size, gray, background).result()


def _vips_decode(source, size: int, gray: bool, background: tuple[int, int, int]) -> np.ndarray:
    vips = pyvips()
    if vips is None:
        raise BadImage(f"{TOO_LARGE}pyvips is installed but cannot load libvips; {INSTALL_PYVIPS}")
    try:
        src = (vips.Source.new_from_memory(source) if isinstance(source, bytes)
               else vips.Source.new_from_file(os.fspath(source)))
        # fail_on: a file whose rows are not all there is an error, not an image padded with black
        img = vips.Image.thumbnail_source(src, size, height=size, crop="centre", option_string="fail_on=truncated")
        img = img.colourspace("b-w" if gray else "srgb")  # 16-bit to 8, CMYK and palettes to RGB; alpha kept
        if img.hasalpha():
            bg = Image.new("RGB", (1, 1), background).convert("L").getpixel((0, 0)) if gray else list(background)
            img = img.flatten(background=bg)
        img = img.cast("uchar")
        pixels = img.write_to_memory()
    except vips.Error as e:  # its first line is "unable to call ...": the reason is the last
        raise BadImage([line.strip() for line in str(e).splitlines() if line.strip()][-1]) from None
    arr = np.ndarray(buffer=pixels, dtype=np.uint8, shape=(img.height, img.width, img.bands))
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def _to_8bit(img: Image.Image) -> Image.Image:
    """16/32-bit integer and float grayscale -> L, scaled (not clipped) when values exceed 255."""
    arr = np.asarray(img, dtype=np.float64)
    if img.mode.startswith("I;16") or (img.mode == "I" and arr.max() > 255):
        arr = arr / 257.0
    return Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8), "L")


def standard_mode(img: Image.Image, gray: bool, background: tuple[int, int, int]) -> Image.Image:
    """`img` in L (gray=True) or RGB, transparency composited onto `background`."""
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")  # applies the palette and its transparency (tRNS)
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        img = _to_8bit(img)
    if img.mode in ("LA", "La", "RGBA", "RGBa") or "transparency" in img.info:
        if img.mode not in ("LA", "RGBA"):
            img = img.convert("RGBA")  # premultiplied modes, and a tRNS colour key, become a real alpha channel
        alpha = img.getchannel("A")
        if gray:  # gray background: the luma of the colour (ITU-R 601, PIL's own L conversion)
            bg = Image.new("RGB", (1, 1), background).convert("L").getpixel((0, 0))
            return Image.composite(img.convert("L"), Image.new("L", img.size, bg), alpha)
        return Image.composite(img.convert("RGB"), Image.new("RGB", img.size, background), alpha)
    return img.convert("L" if gray else "RGB")


def resize_crop(img: Image.Image, n: int) -> Image.Image:
    """Shorter side to n (antialiased bilinear), then the centre n x n (torchvision's rounding)."""
    w, h = img.size
    if (w, h) != (n, n):
        if min(w, h) != n:
            img = img.resize(resized_size(w, h, n), Image.BILINEAR)
        w, h = img.size
        top, left = int(round((h - n) / 2.0)), int(round((w - n) / 2.0))
        img = img.crop((left, top, left + n, top + n))
    return img


def decode(path, size: int | None, gray: bool, background: tuple[int, int, int], huge_lock=None) -> np.ndarray:
    """One file (a path or a binary file object) -> uint8 (C, n, n) (or (C, H, W) at its own size when `size` is
    None), C = 1 if gray else 3.

    `huge_lock` (a multiprocessing lock, or None) is held while an image above PIL's bomb limit is in memory,
    so only one is at a time. Raises BadImage with a one-line reason.
    """
    try:
        with open_image(path) as img:
            (w, h), mode, scale = img.size, img.mode, 1
            if size is not None and img.format == "JPEG":
                img.draft(None, resized_size(*img.size, size))
                scale = img.decoderconfig[0] if img.decoderconfig else 1  # the DCT scale libjpeg will use
            if not check_size(w, h, mode, scale):
                if size is None or not have_pyvips():
                    raise _too_large(w, h, mode, scale)
                if not isinstance(path, (str, os.PathLike)):
                    path.seek(0)
                return decode_large(path, size, gray, background)
            huge = Image.MAX_IMAGE_PIXELS is not None and w * h > Image.MAX_IMAGE_PIXELS
            if huge and huge_lock is not None:
                with huge_lock:
                    return _finish(img, size, gray, background)
            return _finish(img, size, gray, background)
    except BadImage:
        raise
    except Exception as e:  # truncated data, bad CRC, unsupported mode...
        raise BadImage(_reason(e)) from None


def _finish(img: Image.Image, size: int | None, gray: bool, background: tuple[int, int, int]) -> np.ndarray:
    img.load()
    if size is not None:
        # a power of two: PIL's reduce divides in 24-bit fixed point, exact only for those (else 255 -> 253)
        factor = 1 << max(0, (min(img.size) // (2 * size)).bit_length() - 1)
        if factor >= 2 and img.mode in ("L", "LA", "RGB", "RGBA", "I", "F", "CMYK"):
            img = img.reduce(factor)  # box filter: exact averages, and all later steps work on a small image
    img = ImageOps.exif_transpose(img)
    img = standard_mode(img, gray, background)
    if size is not None:
        img = resize_crop(img, size)
    arr = np.asarray(img, dtype=np.uint8)
    return np.ascontiguousarray(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
