"""`latent_preview`, `node_helpers` and a headless `PromptServer.instance`: latent->RGB previews computed
as ComfyUI's linear map, a sampler callback reporting progress with previews for the running node,
ComfyUI's conditioning/pillow/dtype helpers, and packs that message a server in a run without one."""

from __future__ import annotations

import importlib
import io
import sys
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from engine.execution.events import NodeProgress
from engine.graph.api_format import parse_api_workflow
from tests.unit.compat.env_packs import PreviewSink, runtime_with_pack

CALLBACK_PACK = """
import torch
import latent_preview
from server import PromptServer


class FakeModel:
    "A ComfyUI-shaped model: .model.latent_format with latent->RGB factors."
    def __init__(self):
        fmt = type("Fmt", (), {"latent_rgb_factors": [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0]],
                               "latent_rgb_factors_bias": None, "latent_channels": 4})()
        self.model = type("Inner", (), {"latent_format": fmt})()
        self.load_device = torch.device("cpu")


class Sample:
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"steps": ("INT", {"default": 2})}}

    def run(self, steps):
        kept = {}
        callback = latent_preview.prepare_callback(FakeModel(), steps, kept)
        for step in range(steps):
            x0 = torch.full((1, 4, 2, 2), -1.0 + step)
            callback(step, x0, x0, steps)
        PromptServer.instance.send_sync("pack.done", {"steps": steps})
        PromptServer.instance.send_sync(1, b"raw bytes")
        return (int(kept["x0"][0, 0, 0, 0]),)


NODE_CLASS_MAPPINGS = {"HelperSample": Sample}
"""


@pytest.fixture
def runtime(tmp_path):
    return runtime_with_pack(tmp_path, "helper_pack", CALLBACK_PACK)


def test_prepare_callback_reports_steps_and_previews_headless_messages_are_harmless(runtime):
    sink = PreviewSink()
    prompt = {"1": {"class_type": "HelperSample", "inputs": {"steps": 2}}}
    result = runtime.executor.run(parse_api_workflow(prompt), targets=["1"], sink=sink)
    assert result.ok and result.output("1") == 0  # the last x0 (-1 + 1) kept for the caller
    progress = [e for e in sink.events if isinstance(e, NodeProgress)]
    assert [(e.value, e.max) for e in progress] == [(1, 2), (2, 2)]
    # step 0: latent -1 everywhere -> RGB (-1, -1, -1) -> black; step 1: 0 -> mid grey (127)
    assert progress[0].preview.getpixel((0, 0)) == (0, 0, 0)
    assert progress[1].preview.getpixel((1, 1)) == (127, 127, 127)
    bridge = sys.modules["server"].PromptServer.instance._bridge
    assert bridge.sent_headless == 2  # no server: sent nowhere, and no error


def test_latent2rgb_previewer_applies_factors_and_bias(runtime):
    latent_preview = importlib.import_module("latent_preview")
    factors = [[0.5, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 0.5], [0.25, 0.25, 0.25]]
    previewer = latent_preview.Latent2RGBPreviewer(factors, [0.0, 0.1, -0.1])
    x0 = torch.zeros(2, 4, 3, 5)
    x0[0, 0] = 1.0
    x0[0, 3] = 2.0
    kind, image, size = previewer.decode_latent_to_preview_image("JPEG", x0)
    assert (kind, size, image.size) == ("JPEG", 512, (5, 3))
    # R = .5*1 + .25*2 = 1.0 -> 255; G = .5 + .1 = .6 -> int(.8*255); B = .5 - .1 = .4 -> int(.7*255)
    assert image.getpixel((0, 0)) == (255, int(0.8 * 255), int(0.7 * 255))
    video = torch.zeros(1, 4, 2, 3, 5)  # (B, C, T, H, W): the first frame
    assert previewer.decode_latent_to_preview(video).size == (5, 3)
    fmt = SimpleNamespace(latent_channels=16)  # no factors: the family's own map (16 channels: flux)
    assert isinstance(
        latent_preview.get_previewer(torch.device("cpu"), fmt), latent_preview.Latent2RGBPreviewer
    )
    # no decoder file in models/vae_approx and no runtime previewer (no models): latent2rgb for SD1 too
    sd15 = importlib.import_module("comfy.latent_formats").SD15()
    assert isinstance(latent_preview.get_previewer(None, sd15), latent_preview.Latent2RGBPreviewer)
    with pytest.raises(FileNotFoundError):  # the real TAESD class: it reads the file it is given
        latent_preview.TAESD(None, "taesd_decoder.pth")


def test_node_helpers(runtime):
    helpers = importlib.import_module("node_helpers")
    cond = [[torch.zeros(1), {"strength": 1.0}], [torch.ones(1), {}]]
    out = helpers.conditioning_set_values(cond, {"strength": 0.5, "area": (8, 8, 0, 0)}, append=True)
    assert out[0][1] == {"strength": 1.5, "area": (8, 8, 0, 0)} and out[1][1]["strength"] == 0.5
    assert cond[0][1] == {"strength": 1.0}  # the input is not changed
    assert (
        helpers.string_to_torch_dtype("bf16") is torch.bfloat16 and helpers.string_to_torch_dtype("x") is None
    )
    rgb, rgba = torch.zeros(1, 2, 2, 3), torch.ones(1, 2, 2, 4)
    dest, src = helpers.image_alpha_fix(rgb, rgba)
    assert dest.shape[-1] == 3 and src.shape[-1] == 3
    # ComfyUI's rule for a destination with more channels: it gets one more, opaque channel
    dest, src = helpers.image_alpha_fix(torch.zeros(1, 2, 2, 3), torch.zeros(1, 2, 2, 2))
    assert dest.shape[-1] == 4 and bool((dest[..., 3] == 1.0).all()) and src.shape[-1] == 2
    assert helpers.is_link(["4", 0]) and not helpers.is_link([4, 0]) and not helpers.is_link("4")
    assert helpers.hasher()(b"x").hexdigest() == __import__("hashlib").sha256(b"x").hexdigest()
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (9, 9, 9)).save(buffer, format="PNG")
    truncated = buffer.getvalue()[:-30]

    def load(data: bytes):
        image = Image.open(io.BytesIO(data))
        image.load()
        return image

    with pytest.raises(OSError):
        load(truncated)
    assert helpers.pillow(load, truncated).size == (32, 32)
