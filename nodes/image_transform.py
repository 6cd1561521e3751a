"""Image geometry, batches and pixel post-processing (ComfyUI's image/transform, image/batch and
image/postprocessing families): flip, rotate, stitch, resize-and-pad, batch slicing, noise, colour
quantisation, grey-scale morphology and YCbCr conversion.

IMAGE values are (B, H, W, C) float tensors in 0..1 (DESIGN.md §1); outputs are new tensors.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from engine import api

from ._image_ops import common_upscale

SEED_MAX = 0xFFFFFFFFFFFFFFFF


def _resize(image: torch.Tensor, width: int, height: int, method: str) -> torch.Tensor:
    return common_upscale(image.movedim(-1, 1), width, height, method, "disabled").movedim(1, -1)


@api.node(
    "ImageFlip",
    category="image/transform",
    inputs=[
        api.Input("image", api.IMAGE),
        api.Combo("flip_method", ["x-axis: vertically", "y-axis: horizontally"]),
    ],
    outputs=[api.IMAGE],
)
def image_flip(image: torch.Tensor, flip_method: str):
    """Mirror across the x axis (top <-> bottom) or the y axis (left <-> right)."""
    return (torch.flip(image, dims=[1] if flip_method.startswith("x") else [2]),)


ROTATIONS = ["none", "90 degrees", "180 degrees", "270 degrees"]


@api.node(
    "ImageRotate",
    category="image/transform",
    inputs=[api.Input("image", api.IMAGE), api.Combo("rotation", ROTATIONS)],
    outputs=[api.IMAGE],
)
def image_rotate(image: torch.Tensor, rotation: str):
    """Rotate clockwise by a multiple of 90 degrees."""
    quarter_turns = ROTATIONS.index(rotation) if rotation in ROTATIONS else 0
    # rot90 from the width axis towards the height axis turns the picture clockwise.
    return (torch.rot90(image, k=quarter_turns, dims=[2, 1]),)


STITCH_COLOURS: dict[str, tuple[float, float, float]] = {
    "white": (1.0, 1.0, 1.0),
    "black": (0.0, 0.0, 0.0),
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
}


def _extend_batch(image: torch.Tensor, batch: int) -> torch.Tensor:
    """Pad a batch to `batch` entries by repeating its last image."""
    missing = batch - image.shape[0]
    return torch.cat([image, image[-1:].repeat(missing, 1, 1, 1)]) if missing > 0 else image


def _pad_centred(image: torch.Tensor, axis: int, size: int, value: float) -> torch.Tensor:
    """Pad axis 1 (height) or 2 (width) to `size`, half before and half (rounded up) after."""
    extra = size - image.shape[axis]
    if extra <= 0:
        return image
    before, after = extra // 2, extra - extra // 2
    pad = (0, 0, before, after) if axis == 2 else (0, 0, 0, 0, before, after)
    return F.pad(image, pad, mode="constant", value=value)


def _with_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    """Add opaque (1.0) channels up to `channels` (an RGB image next to an RGBA one)."""
    missing = channels - image.shape[-1]
    if missing <= 0:
        return image
    return torch.cat([image, torch.ones(*image.shape[:-1], missing, dtype=image.dtype)], dim=-1)


def _spacer(shape: tuple[int, int, int, int], colour: str, like: torch.Tensor) -> torch.Tensor:
    spacer = torch.zeros(shape, dtype=like.dtype, device=like.device)
    rgb = STITCH_COLOURS[colour]
    for channel in range(min(3, shape[-1])):
        spacer[..., channel] = rgb[channel]
    if shape[-1] == 4:
        spacer[..., 3] = 1.0
    return spacer


@api.node(
    "ImageStitch",
    category="image/transform",
    display_name="Image Stitch",
    inputs=[
        api.Input("image1", api.IMAGE),
        api.Combo("direction", ["right", "down", "left", "up"], default="right"),
        api.Boolean("match_image_size", True),
        api.Int("spacing_width", 0, min=0, max=1024, step=2),
        api.Combo("spacing_color", list(STITCH_COLOURS), default="white"),
        api.Input("image2", api.IMAGE, optional=True),
    ],
    outputs=[api.IMAGE],
)
def image_stitch(
    image1: torch.Tensor,
    direction: str,
    match_image_size: bool,
    spacing_width: int,
    spacing_color: str,
    image2: torch.Tensor | None = None,
):
    """Put image2 to the right of, below, left of or above image1, optionally with a coloured gap.

    match_image_size scales image2 (lanczos, aspect kept) to image1's height (left/right) or width
    (up/down); otherwise the shorter one is padded, centred (with the gap colour when it is grey, else
    black). A shorter batch repeats its last image."""
    if image2 is None:
        return (image1,)
    batch = max(image1.shape[0], image2.shape[0])
    image1, image2 = _extend_batch(image1, batch), _extend_batch(image2.to(image1), batch)
    sideways = direction in ("left", "right")
    if match_image_size:
        (h1, w1), (h2, w2) = image1.shape[1:3], image2.shape[1:3]
        aspect = w2 / h2
        size = (int(h1 * aspect), h1) if sideways else (w1, int(w1 / aspect))
        image2 = _resize(image2, size[0], size[1], "lanczos")
    else:
        rgb = STITCH_COLOURS[spacing_color]
        pad_value = rgb[0] if len(set(rgb)) == 1 else 0.0
        axis = 1 if sideways else 2
        size = max(image1.shape[axis], image2.shape[axis])
        image1, image2 = (_pad_centred(im, axis, size, pad_value) for im in (image1, image2))
    channels = max(image1.shape[-1], image2.shape[-1])
    image1, image2 = _with_channels(image1, channels), _with_channels(image2, channels)
    parts = [image2, image1] if direction in ("left", "up") else [image1, image2]
    if spacing_width > 0:
        gap = spacing_width + spacing_width % 2
        if sideways:
            shape = (batch, max(image1.shape[1], image2.shape[1]), gap, channels)
        else:
            shape = (batch, gap, max(image1.shape[2], image2.shape[2]), channels)
        parts.insert(1, _spacer(shape, spacing_color, image1))
    return (torch.cat(parts, dim=2 if sideways else 1),)


@api.node(
    "GetImageSize",
    category="image",
    display_name="Get Image Size",
    inputs=[api.Input("image", api.IMAGE)],
    outputs=[api.Output(api.INT, "width"), api.Output(api.INT, "height"), api.Output(api.INT, "batch_size")],
    hidden={"unique_id": api.HIDDEN_UNIQUE_ID},
)
def get_image_size(image: torch.Tensor, unique_id: str | None = None):
    """Width, height and batch size; the node also shows them as text."""
    batch, height, width = (int(n) for n in image.shape[:3])
    text = f"width: {width}, height: {height}\n batch size: {batch}"
    return api.NodeOutput(width, height, batch, ui={"text": [text]})


@api.node(
    "ImageFromBatch",
    category="image/batch",
    inputs=[
        api.Input("image", api.IMAGE),
        api.Int("batch_index", 0, min=0, max=4095, step=None),
        api.Int("length", 1, min=1, max=4096, step=None),
    ],
    outputs=[api.IMAGE],
)
def image_from_batch(image: torch.Tensor, batch_index: int, length: int):
    """`length` images from `batch_index` (both clamped to the batch)."""
    start = min(image.shape[0] - 1, batch_index)
    count = min(image.shape[0] - start, length)
    return (image[start : start + count].clone(),)


@api.node(
    "RepeatImageBatch",
    category="image/batch",
    inputs=[api.Input("image", api.IMAGE), api.Int("amount", 1, min=1, max=4096, step=None)],
    outputs=[api.IMAGE],
)
def repeat_image_batch(image: torch.Tensor, amount: int):
    """The whole batch repeated `amount` times (a, b, a, b, ...)."""
    return (image.repeat((amount, 1, 1, 1)),)


@api.node(
    "ImageAddNoise",
    category="image",
    inputs=[
        api.Input("image", api.IMAGE),
        api.Int("seed", 0, min=0, max=SEED_MAX, step=None, control_after_generate=True),
        api.Float("strength", 0.5, min=0.0, max=1.0, step=0.01),
    ],
    outputs=[api.IMAGE],
)
def image_add_noise(image: torch.Tensor, seed: int, strength: float):
    """image + strength · N(0, 1), clipped to 0..1; the noise is a CPU draw from the seed (ComfyUI's)."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.randn(image.size(), generator=generator, device="cpu").to(image)
    return (torch.clamp(image + strength * noise, 0.0, 1.0),)


@api.node(
    "ResizeAndPadImage",
    category="image/transform",
    inputs=[
        api.Input("image", api.IMAGE),
        api.Int("target_width", 512, min=1, max=api.MAX_RESOLUTION, step=1),
        api.Int("target_height", 512, min=1, max=api.MAX_RESOLUTION, step=1),
        api.Combo("padding_color", ["white", "black"]),
        api.Combo("interpolation", ["area", "bicubic", "nearest-exact", "bilinear", "lanczos"]),
    ],
    outputs=[api.IMAGE],
)
def resize_and_pad_image(
    image: torch.Tensor, target_width: int, target_height: int, padding_color: str, interpolation: str
):
    """Fit inside target_width × target_height keeping the aspect ratio, centred on a white or black
    canvas of exactly that size."""
    batch, height, width, channels = image.shape
    scale = min(target_width / width, target_height / height)
    new_w, new_h = int(width * scale), int(height * scale)
    resized = _resize(image, new_w, new_h, interpolation)
    canvas = torch.full(
        (batch, target_height, target_width, channels),
        0.0 if padding_color == "black" else 1.0,
        dtype=image.dtype,
    )
    y, x = (target_height - new_h) // 2, (target_width - new_w) // 2
    canvas[:, y : y + new_h, x : x + new_w] = resized
    return (canvas,)


@api.node(
    "ImageScaleToMaxDimension",
    category="image/upscaling",
    inputs=[
        api.Input("image", api.IMAGE),
        # ComfyUI lists "bilinear" twice; the list is kept as published so saved values validate alike.
        api.Combo("upscale_method", ["area", "lanczos", "bilinear", "nearest-exact", "bilinear", "bicubic"]),
        api.Int("largest_size", 512, min=0, max=api.MAX_RESOLUTION, step=1),
    ],
    outputs=[api.IMAGE],
)
def image_scale_to_max_dimension(image: torch.Tensor, upscale_method: str, largest_size: int):
    """Scale so the longer side is `largest_size` pixels, the other side in proportion (rounded)."""
    height, width = image.shape[1], image.shape[2]
    if height > width:
        width, height = round(width / height * largest_size), largest_size
    elif width > height:
        width, height = largest_size, round(height / width * largest_size)
    else:
        width = height = largest_size
    return (_resize(image, width, height, upscale_method),)


def bayer_matrix(order: int) -> np.ndarray:
    """The normalised n×n Bayer threshold matrix (n = 2**level), values centred on 0 in (-0.5, 0.5):
    M_0 = [[0]]; M_k = [[q·M - 1.5, q·M + 0.5], [q·M + 1.5, q·M - 0.5]] / q with q = 4**k, M = M_(k-1)."""
    matrix = np.zeros((1, 1), dtype=np.float64)
    for level in range(1, int(math.log2(order)) + 1):
        q = 4**level
        m = q * matrix
        matrix = np.block([[m - 1.5, m + 0.5], [m + 1.5, m - 0.5]]) / q
    return matrix


def _quantize_one(pixels: np.ndarray, colors: int, dither: str) -> np.ndarray:
    from PIL import Image

    picture = Image.fromarray(pixels, mode="RGB")
    # Pillow needs a palette image to map onto with a chosen dither (python-pillow/Pillow#5836).
    palette = picture.quantize(colors=colors)
    if dither.startswith("bayer"):
        order = int(dither.split("-")[-1])
        spread = 2 * 256 / (len(palette.getpalette() or []) // 3)
        threshold = spread * bayer_matrix(order) + 0.5
        reps = (-(-pixels.shape[0] // order), -(-pixels.shape[1] // order))
        tiled = np.tile(threshold, reps)[: pixels.shape[0], : pixels.shape[1], None]
        shifted = np.clip(pixels.astype(np.float32) + tiled, 0, 255).astype(np.uint8)
        mapped = Image.fromarray(shifted).quantize(palette=palette, dither=Image.Dither.NONE)
    else:
        mode = Image.Dither.FLOYDSTEINBERG if dither == "floyd-steinberg" else Image.Dither.NONE
        mapped = picture.quantize(palette=palette, dither=mode)
    return np.asarray(mapped.convert("RGB"), dtype=np.float32) / 255.0


@api.node(
    "ImageQuantize",
    category="image/postprocessing",
    inputs=[
        api.Input("image", api.IMAGE),
        api.Int("colors", 256, min=1, max=256, step=1),
        api.Combo("dither", ["none", "floyd-steinberg", "bayer-2", "bayer-4", "bayer-8", "bayer-16"]),
    ],
    outputs=[api.IMAGE],
)
def image_quantize(image: torch.Tensor, colors: int, dither: str):
    """Reduce each image to a palette of at most `colors` colours (Pillow's median cut), mapping pixels
    without dithering, with Floyd-Steinberg error diffusion, or with an ordered Bayer threshold."""
    out = torch.zeros_like(image)
    for index in range(image.shape[0]):
        pixels = (image[index, ..., :3] * 255).to(torch.uint8).cpu().numpy()
        out[index, ..., :3] = torch.from_numpy(_quantize_one(pixels, colors, dither))
    return (out,)


def _flat_window(x: torch.Tensor, size: int, reduce_max: bool) -> torch.Tensor:
    """Max (or min) of x over a size×size window anchored at offset size//2 (kornia's origin); pixels
    outside the image never win (geodesic border)."""
    before, after = size // 2, size - size // 2 - 1
    sign = 1.0 if reduce_max else -1.0
    padded = F.pad(sign * x, (before, after, before, after), value=-math.inf)
    return sign * F.max_pool2d(padded, size, stride=1)


def morphology(image: torch.Tensor, operation: str, size: int) -> torch.Tensor:
    """Grey-scale morphology with a flat size×size square, per channel: erode (window min), dilate
    (window max), open/close (erode then dilate / dilate then erode), gradient (dilate - erode),
    top_hat (image - open), bottom_hat (close - image)."""
    x = image.movedim(-1, 1)

    def erode(t: torch.Tensor) -> torch.Tensor:
        return _flat_window(t, size, reduce_max=False)

    def dilate(t: torch.Tensor) -> torch.Tensor:
        return _flat_window(t, size, reduce_max=True)

    operations = {
        "erode": lambda: erode(x),
        "dilate": lambda: dilate(x),
        "open": lambda: dilate(erode(x)),
        "close": lambda: erode(dilate(x)),
        "gradient": lambda: dilate(x) - erode(x),
        "top_hat": lambda: x - dilate(erode(x)),
        "bottom_hat": lambda: erode(dilate(x)) - x,
    }
    if operation not in operations:
        raise ValueError(f"unknown morphology operation {operation!r}; use one of {sorted(operations)}")
    return operations[operation]().movedim(1, -1)


@api.node(
    "Morphology",
    category="image/postprocessing",
    display_name="ImageMorphology",
    inputs=[
        api.Input("image", api.IMAGE),
        api.Combo("operation", ["erode", "dilate", "open", "close", "gradient", "bottom_hat", "top_hat"]),
        api.Int("kernel_size", 3, min=3, max=999, step=1),
    ],
    outputs=[api.IMAGE],
)
def image_morphology(image: torch.Tensor, operation: str, kernel_size: int):
    return (morphology(image, operation, kernel_size),)


# RGB <-> YCbCr as kornia.color computes it (ComfyUI's nodes use kornia): BT.601 luma weights, chroma
# scaled by 0.564 / 0.713 and offset by 0.5, and the matching inverse coefficients.
LUMA = (0.299, 0.587, 0.114)


def rgb_to_ycbcr(rgb: torch.Tensor) -> torch.Tensor:
    r, g, b = rgb.unbind(-1)
    y = LUMA[0] * r + LUMA[1] * g + LUMA[2] * b
    return torch.stack([y, (b - y) * 0.564 + 0.5, (r - y) * 0.713 + 0.5], dim=-1)


def ycbcr_to_rgb(ycc: torch.Tensor) -> torch.Tensor:
    y, cb, cr = ycc.unbind(-1)
    cb, cr = cb - 0.5, cr - 0.5
    return torch.stack([y + 1.403 * cr, y - 0.714 * cr - 0.344 * cb, y + 1.773 * cb], dim=-1)


@api.node(
    "ImageRGBToYUV",
    category="image/batch",
    inputs=[api.Input("image", api.IMAGE)],
    outputs=[api.Output(api.IMAGE, "Y"), api.Output(api.IMAGE, "U"), api.Output(api.IMAGE, "V")],
)
def image_rgb_to_yuv(image: torch.Tensor):
    """The Y, Cb (U) and Cr (V) planes, each as a grey image (the plane in every channel)."""
    ycc = rgb_to_ycbcr(image[..., :3])
    shape = image[..., :3].shape
    return tuple(ycc[..., i : i + 1].expand(shape) for i in range(3))


@api.node(
    "ImageYUVToRGB",
    category="image/batch",
    inputs=[api.Input("Y", api.IMAGE), api.Input("U", api.IMAGE), api.Input("V", api.IMAGE)],
    outputs=[api.IMAGE],
)
def image_yuv_to_rgb(Y: torch.Tensor, U: torch.Tensor, V: torch.Tensor):  # noqa: N803 - ComfyUI's input names
    """RGB from Y, U, V planes given as images (each plane is the mean of its image's channels)."""
    ycc = torch.cat([p.mean(dim=-1, keepdim=True) for p in (Y, U, V)], dim=-1)
    return (ycbcr_to_rgb(ycc),)


NODES = [
    image_flip,
    image_rotate,
    image_stitch,
    get_image_size,
    image_from_batch,
    repeat_image_batch,
    image_add_noise,
    resize_and_pad_image,
    image_scale_to_max_dimension,
    image_quantize,
    image_morphology,
    image_rgb_to_yuv,
    image_yuv_to_rgb,
]
