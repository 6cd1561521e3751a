"""TAESD previews: decoder files in the published key layout, and --preview-method's choice between
TAESD, latent2rgb and nothing (ComfyUI's latent_preview / cli_args)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from engine.diffusion.models.taesd import TAESD_DECODERS, load_decoder
from engine.diffusion.sampling.previewers import LatentPreview, LatentPreviewer
from engine.execution.context import PREVIEWER, ExecutionContext, InterruptFlag
from engine.execution.events import NodeProgress
from engine.folders import Folders
from engine.runtime import latent_previewer
from tests.unit.engine.event_sinks import CollectingSink


def _block_keys(index: int) -> dict[str, tuple[int, ...]]:
    return {
        f"{index}.conv.{i}.{kind}": (64, 64, 3, 3) if kind == "weight" else (64,)
        for i in (0, 2, 4)
        for kind in ("weight", "bias")
    }


def published_decoder_shapes(latent_channels: int) -> dict[str, tuple[int, ...]]:
    """The keys and shapes of madebyollin's taesd*_decoder files, written out by index: 0 clamp,
    1 conv(C->64), 2 ReLU, then three times (3 blocks, upsample, bias-free conv), a block, conv(64->3)."""
    shapes: dict[str, tuple[int, ...]] = {"1.weight": (64, latent_channels, 3, 3), "1.bias": (64,)}
    index = 3
    for _ in range(3):
        for _ in range(3):
            shapes.update(_block_keys(index))
            index += 1
        shapes[f"{index + 1}.weight"] = (64, 64, 3, 3)  # after nn.Upsample (no parameters)
        index += 2
    shapes.update(_block_keys(index))
    shapes.update({f"{index + 1}.weight": (3, 64, 3, 3), f"{index + 1}.bias": (3,)})
    return shapes


def write_tiny_decoder(path: Path, latent_channels: int, seed: int = 0) -> Path:
    generator = torch.Generator().manual_seed(seed)
    tensors = {
        key: torch.randn(shape, generator=generator) * (0.05 if key.endswith("weight") else 0.01)
        for key, shape in published_decoder_shapes(latent_channels).items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path


@pytest.mark.parametrize("channels", [4, 16])
def test_a_published_layout_decoder_loads_and_decodes_to_8x(tmp_path, channels):
    path = write_tiny_decoder(tmp_path / "taesd_decoder.safetensors", channels)
    taesd = load_decoder(path, channels)
    assert torch.equal(taesd.taesd_decoder.state_dict()["19.bias"], _read(path)["19.bias"])
    with torch.no_grad():
        image = taesd.decode(torch.randn(1, channels, 3, 5))
    assert image.shape == (1, 3, 24, 40)
    assert image.isfinite().all() and image.std() > 0


def _read(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_a_file_missing_a_key_is_refused(tmp_path):
    path = tmp_path / "taesd_decoder.safetensors"
    tensors = _read(write_tiny_decoder(path, 4))
    del tensors["7.weight"]
    save_file(tensors, str(path))
    with pytest.raises(RuntimeError, match="7.weight"):
        load_decoder(path, 4)


def test_a_broken_decoder_file_falls_back_to_latent2rgb_instead_of_failing(tmp_path, caplog):
    folders = _folders(tmp_path, ("taesd_decoder.safetensors", 16))  # SD1's name, FLUX's channels
    previewer = latent_previewer(folders, "auto")
    assert previewer.render(_preview()).size == (6, 4)
    assert previewer.render(_preview()).size == (6, 4)
    assert sum("could not load the TAESD decoder" in r.message for r in caplog.records) == 1


def test_family_decoder_names_are_comfyuis():
    assert {f: n for f, (n, _) in TAESD_DECODERS.items() if f in ("sd1", "sdxl", "sd3", "flux")} == {
        "sd1": "taesd_decoder",
        "sdxl": "taesdxl_decoder",
        "sd3": "taesd3_decoder",
        "flux": "taef1_decoder",
    }
    assert TAESD_DECODERS["flux"][1] == 16 and TAESD_DECODERS["sdxl"][1] == 4


# ---- --preview-method -----------------------------------------------------------------------------


def _latent2rgb_image(x0: torch.Tensor):
    """A stand-in for ModelHandle.preview_image at latent resolution: its size tells the two paths apart."""
    from PIL import Image

    return Image.new("RGB", (x0.shape[-1], x0.shape[-2]))


def _preview(family: str = "sd1", channels: int = 4) -> LatentPreview:
    return LatentPreview(family, torch.randn(1, channels, 4, 6), _latent2rgb_image)


def _folders(tmp_path: Path, *decoders: tuple[str, int]) -> Folders:
    folders = Folders.create(tmp_path)
    for name, channels in decoders:
        write_tiny_decoder(folders.roots("vae_approx")[0] / name, channels)
    return folders


def test_auto_uses_taesd_when_the_family_decoder_is_in_vae_approx(tmp_path):
    previewer = latent_previewer(_folders(tmp_path, ("taesdxl_decoder.pth.safetensors", 4)), "auto")
    assert previewer.render(_preview("sdxl")).size == (48, 32)  # TAESD: 8x the latent
    assert previewer.render(_preview("sd1")).size == (6, 4)  # no taesd_decoder file: latent2rgb
    assert previewer.decoder_for("sdxl") is previewer.decoder_for("sdxl_refiner")  # loaded once


def test_auto_falls_back_to_latent2rgb_without_files_and_finds_a_file_added_later(tmp_path):
    folders = _folders(tmp_path)
    previewer = latent_previewer(folders, "auto")
    assert previewer.render(_preview("flux", 16)).size == (6, 4)
    write_tiny_decoder(folders.roots("vae_approx")[0] / "taef1_decoder.safetensors", 16)
    assert previewer.render(_preview("flux", 16)).size == (48, 32)


def test_latent2rgb_ignores_decoder_files_and_taesd_falls_back_when_missing(tmp_path):
    folders = _folders(tmp_path, ("taesd_decoder.safetensors", 4))
    assert latent_previewer(folders, "latent2rgb").render(_preview()).size == (6, 4)
    assert latent_previewer(folders, "taesd").render(_preview()).size == (48, 32)
    assert latent_previewer(folders, "taesd").render(_preview("sd3", 16)).size == (6, 4)


def test_an_unknown_method_is_refused():
    with pytest.raises(ValueError, match="preview method"):
        LatentPreviewer("fast", lambda name: None)


class _PreviewSink(CollectingSink):
    wants_previews = True  # as the server's sink


def _context(previewer: LatentPreviewer | None) -> tuple[ExecutionContext, _PreviewSink]:
    sink = _PreviewSink()
    services = {} if previewer is None else {PREVIEWER: previewer}
    context = ExecutionContext(
        prompt_id="p", node_id="3", node_type="KSampler", sink=sink, interrupt=InterruptFlag(), services=services
    )  # fmt: skip
    return context, sink


def _progress_preview(previewer: LatentPreviewer | None, preview: object) -> object:
    context, sink = _context(previewer)
    context.progress(1, 2, preview)
    (event,) = sink.of_type(NodeProgress)
    assert (event.value, event.max) == (1, 2)
    return event.preview


def test_the_context_renders_sampler_previews_with_the_runtimes_previewer(tmp_path):
    folders = _folders(tmp_path, ("taesd_decoder.safetensors", 4))
    assert _progress_preview(latent_previewer(folders, "none"), _preview()) is None
    assert _progress_preview(latent_previewer(folders, "auto"), _preview()).size == (48, 32)
    assert _progress_preview(None, _preview()).size == (6, 4)  # no previewer service: latent2rgb
    # A node's own preview function is still drawn under "none" (only sampler previews are switched off).
    assert _progress_preview(latent_previewer(folders, "none"), lambda: "image") == "image"


def test_ksampler_previews_go_through_taesd_or_nowhere(tmp_path):
    """A real KSampler run on a tiny SD1 checkpoint: its step previews are TAESD images (8x the latent)
    under auto with taesd_decoder present, and absent under none."""
    from engine.handles import load_checkpoint_handles
    from engine.handles import sampling as hs
    from engine.memory.devices import MemoryOptions, select_device
    from engine.memory.manager import ModelManager
    from engine.runtime import sampling_library
    from tests.factories.checkpoints import write_tiny_checkpoint

    checkpoint = write_tiny_checkpoint(tmp_path / "sd1.safetensors", "sd1", seed=1)
    manager = ModelManager(select_device(MemoryOptions()))
    model, clip, _ = load_checkpoint_handles(checkpoint, manager=manager, want_vae=False)
    assert clip is not None
    folders = _folders(tmp_path / "base", ("taesd_decoder.safetensors", 4))
    library = sampling_library()
    for method, expected in (("auto", (64, 64)), ("none", None)):
        context, sink = _context(latent_previewer(folders, method))
        hs.ksample(
            model, seed=1, steps=2, cfg=5.0, sampler_name="euler", scheduler="normal",
            positive=clip.encode_conditioning("a"), negative=clip.encode_conditioning(""),
            latent={"samples": torch.zeros(1, 4, 8, 8)}, report=context.progress, library=library,
        )  # fmt: skip
        previews = [event.preview for event in sink.of_type(NodeProgress)]
        assert len(previews) == 2
        assert [None if p is None else p.size for p in previews] == [expected, expected]
