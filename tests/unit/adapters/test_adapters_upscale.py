"""ESRGAN (both key layouts, several scales) and SRVGG: detection, loading from files, tiling."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from engine.diffusion.checkpoints.upscalers import detect_upscaler, load_upscaler_file
from engine.diffusion.models.upscalers import RRDBNet, SRVGGNetCompact, upscale_tiled


def _rand(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def new_to_old(sd: dict[str, torch.Tensor], nb: int, n_up: int) -> dict[str, torch.Tensor]:
    """The original ESRGAN layout, written independently of the loader's conversion:
    model.0 conv_first, model.1.sub.i.RDBk.convj.0, model.1.sub.nb conv_body, upconvs at 3, 6(, 9),
    then HRconv and conv_last two indices apart."""
    ups = [3 * (i + 1) for i in range(n_up)]
    hr = ups[-1] + 2
    names = {"conv_first": 0, "conv_hr": hr, "conv_last": hr + 2}
    names.update({f"conv_up{i + 1}": u for i, u in enumerate(ups)})
    out = {}
    for k, v in sd.items():
        parts = k.split(".")
        if parts[0] == "body":
            out[f"model.1.sub.{parts[1]}.{parts[2].upper()}.{parts[3]}.0.{parts[4]}"] = v
        elif parts[0] == "conv_body":
            out[f"model.1.sub.{nb}.{parts[1]}"] = v
        else:
            out[f"model.{names[parts[0]]}.{parts[1]}"] = v
    return out


@pytest.mark.slow
@pytest.mark.parametrize("scale", [1, 2, 4, 8])
def test_rrdbnet_new_and_old_layouts(tmp_path, scale):
    net = _rand(RRDBNet(nf=8, nb=1, gc=4, scale=scale), seed=scale)
    img = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        ref = net(img)
    assert ref.shape == (1, 3, 8 * scale, 8 * scale)
    save_file(net.state_dict(), tmp_path / "new.safetensors")
    model, spec = load_upscaler_file(tmp_path / "new.safetensors")
    assert (spec.architecture, spec.scale, spec.in_nc, spec.nf, spec.blocks) == ("ESRGAN", scale, 3, 8, 1)
    with torch.no_grad():
        assert torch.equal(model(img), ref)
    if scale in (4, 8):  # the old layout exists for the plain (no unshuffle) networks
        old = new_to_old(net.state_dict(), nb=1, n_up=net.n_up)
        torch.save(old, tmp_path / "old.pth")
        model, spec = load_upscaler_file(tmp_path / "old.pth")
        assert spec.scale == scale
        with torch.no_grad():
            assert torch.equal(model(img), ref)


def test_old_esrgan_x2_single_upsampling():
    net = _rand(RRDBNet(nf=8, nb=1, gc=4, n_up=1, unshuffle=1))
    spec, _ = detect_upscaler(new_to_old(net.state_dict(), nb=1, n_up=1))
    assert spec.scale == 2 and spec.unshuffle == 1


def test_srvgg_detect_scale_and_params_ema_wrapper(tmp_path):
    net = _rand(SRVGGNetCompact(nf=8, num_conv=2, scale=4), seed=3)
    torch.save({"params_ema": net.state_dict()}, tmp_path / "c.pth")
    model, spec = load_upscaler_file(tmp_path / "c.pth")
    assert (spec.architecture, spec.scale, spec.blocks) == ("SRVGGNetCompact", 4, 2)
    img = torch.rand(1, 3, 6, 5)
    with torch.no_grad():
        assert torch.equal(model(img), net(img))
        assert model(img).shape == (1, 3, 24, 20)


def test_unsupported_architecture_is_named(tmp_path):
    save_file({"layers.0.attn.qkv.weight": torch.zeros(3, 3)}, tmp_path / "swin.safetensors")
    with pytest.raises(ValueError, match=r"swin\.safetensors.*unsupported upscale model"):
        load_upscaler_file(tmp_path / "swin.safetensors")


def test_tiled_matches_untiled_without_seams():
    # A network with a small receptive field: tiles with enough overlap reproduce the whole-image result.
    net = _rand(SRVGGNetCompact(nf=4, num_conv=1, scale=2), seed=5)
    img = torch.rand(1, 3, 40, 52, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = net(img)
        calls = []
        tiled = upscale_tiled(net, img, 2, tile=24, overlap=12, progress=lambda d, t: calls.append((d, t)))
    assert tiled.shape == full.shape
    assert calls[-1][0] == calls[-1][1] > 1
    diff = (tiled - full).abs()
    assert diff.max() < 1e-5
    # No seam: the column-to-column change of the tiled result is never larger than the untiled one's.
    assert (tiled.diff(dim=-1).abs().amax() - full.diff(dim=-1).abs().amax()).abs() < 1e-5
