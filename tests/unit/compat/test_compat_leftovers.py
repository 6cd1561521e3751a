"""Leftovers of the ComfyUI layer: `latent_preview` drawing pack-sampler previews as the runtime's
--preview-method says (TAESD decoders from models/vae_approx shared with diffgraph's own previews),
`comfy.cli_args.args.preview_method` reflecting that method, and ComfyUI's hypernetwork functions."""

from __future__ import annotations

import importlib
import logging
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from engine.diffusion.models.taesd import TAESD as EngineTAESD
from engine.execution.context import PREVIEWER
from engine.execution.events import NodeProgress
from engine.graph.api_format import parse_api_workflow
from tests.unit.compat.env_packs import PreviewSink, runtime_with_pack

EMPTY_PACK = "NODE_CLASS_MAPPINGS = {}\n"

SAMPLER_PACK = """
import torch
import latent_preview
from comfy.latent_formats import SD15


def run(self):
    model = type("Model", (), {"load_device": torch.device("cpu")})()
    model.model = type("Inner", (), {"latent_format": SD15()})()  # a ComfyUI-shaped SD1 model
    callback = latent_preview.prepare_callback(model, 1)
    x0 = torch.zeros(1, 4, 3, 5)
    callback(0, x0, x0, 1)
    return (1,)


Sample = type("Sample", (), {"RETURN_TYPES": ("INT",), "FUNCTION": "run", "CATEGORY": "test", "run": run,
                             "INPUT_TYPES": classmethod(lambda cls: {"required": {}})})
NODE_CLASS_MAPPINGS = {"LeftoverSample": Sample}
"""


def _decoder_file(base, name="taesd_decoder.safetensors", channels=4):
    path = base / "models" / "vae_approx" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)  # its own generator: the global one is left as it was
    shapes = EngineTAESD(latent_channels=channels).taesd_decoder.state_dict()
    save_file({k: torch.randn(v.shape, generator=gen) * 0.05 for k, v in shapes.items()}, str(path))
    return path


def _runtime(tmp_path, method, source=EMPTY_PACK):
    return runtime_with_pack(tmp_path, "leftover_pack", source, with_models=True, preview_method=method)


@pytest.mark.parametrize(
    ("method", "enum_name"),
    [("auto", "Auto"), ("latent2rgb", "Latent2RGB"), ("taesd", "TAESD"), ("none", "NoPreviews")],
)
def test_cli_args_preview_method_is_the_runtimes(tmp_path, method, enum_name):
    _runtime(tmp_path, method)
    cli_args = importlib.import_module("comfy.cli_args")
    assert cli_args.args.preview_method is cli_args.LatentPreviewMethod[enum_name]
    assert cli_args.args.preview_method.value == method  # ComfyUI's enum values are the flag's words


def test_latent_preview_taesd_is_the_real_decoder(tmp_path):
    path = _decoder_file(tmp_path)
    _runtime(tmp_path, "auto")
    latent_preview = importlib.import_module("latent_preview")
    taesd = latent_preview.TAESD(None, str(path), latent_channels=4)
    assert isinstance(taesd, EngineTAESD)
    assert taesd.decode(torch.zeros(1, 4, 3, 5)).shape == (1, 3, 24, 40)


def test_auto_previews_pack_samplers_with_the_runtimes_taesd_decoder(tmp_path):
    _decoder_file(tmp_path)
    runtime = _runtime(tmp_path, "auto")
    latent_preview = importlib.import_module("latent_preview")
    fmt = importlib.import_module("comfy.latent_formats").SD15()
    previewer = latent_preview.get_previewer(torch.device("cpu"), fmt)
    assert isinstance(previewer, latent_preview.TAESDPreviewerImpl)
    # one decoder per file for the whole runtime: the one diffgraph's own sampler previews use
    assert previewer.taesd is runtime.services[PREVIEWER].decoder_for("sd1")
    kind, image, size = previewer.decode_latent_to_preview_image("JPEG", torch.zeros(1, 4, 3, 5))
    assert (kind, image.size, size) == ("JPEG", (40, 24), 512)  # TAESD: 8x the latent


def test_prepare_callback_reports_taesd_previews_for_the_running_node(tmp_path):
    _decoder_file(tmp_path)
    runtime = _runtime(tmp_path, "taesd", SAMPLER_PACK)
    sink = PreviewSink()
    prompt = {"1": {"class_type": "LeftoverSample", "inputs": {}}}
    result = runtime.executor.run(parse_api_workflow(prompt), targets=["1"], sink=sink)
    assert result.ok
    (progress,) = [e for e in sink.events if isinstance(e, NodeProgress)]
    assert progress.preview.size == (40, 24)


@pytest.mark.parametrize("method", ["latent2rgb", "taesd"])
def test_latent2rgb_when_asked_or_when_the_taesd_file_is_missing(tmp_path, method, caplog):
    if method == "latent2rgb":
        _decoder_file(tmp_path)  # there, but not asked for
    _runtime(tmp_path, method)
    latent_preview = importlib.import_module("latent_preview")
    fmt = importlib.import_module("comfy.latent_formats").SD15()
    with caplog.at_level(logging.WARNING):
        previewer = latent_preview.get_previewer(torch.device("cpu"), fmt)
    assert isinstance(previewer, latent_preview.Latent2RGBPreviewer)
    assert previewer.decode_latent_to_preview(torch.zeros(1, 4, 3, 5)).size == (5, 3)
    assert ("taesd_decoder" in caplog.text) == (method == "taesd")


def test_none_and_a_pack_changing_args_at_run_time(tmp_path):
    _decoder_file(tmp_path)
    _runtime(tmp_path, "none")
    latent_preview = importlib.import_module("latent_preview")
    cli_args = importlib.import_module("comfy.cli_args")
    fmt = importlib.import_module("comfy.latent_formats").SD15()
    assert latent_preview.get_previewer(torch.device("cpu"), fmt) is None
    # ComfyUI-Manager sets args.preview_method from its settings page: it applies from then on
    cli_args.args.preview_method = cli_args.LatentPreviewMethod.TAESD
    try:
        assert isinstance(latent_preview.get_previewer(None, fmt), latent_preview.TAESDPreviewerImpl)
    finally:
        cli_args.args.preview_method = cli_args.LatentPreviewMethod.NoPreviews


def test_a_pack_format_the_runtime_does_not_know_reads_its_decoder_from_vae_approx(tmp_path):
    _decoder_file(tmp_path, "taemypack_decoder.pth.safetensors", channels=8)
    _runtime(tmp_path, "auto")
    latent_preview = importlib.import_module("latent_preview")
    fmt = SimpleNamespace(taesd_decoder_name="taemypack_decoder", latent_channels=8, latent_rgb_factors=None)
    previewer = latent_preview.get_previewer(torch.device("cpu"), fmt)
    assert isinstance(previewer, latent_preview.TAESDPreviewerImpl)
    assert previewer.decode_latent_to_preview(torch.zeros(1, 8, 2, 2)).size == (16, 16)


def _mlp(width, gen):
    return {
        "linear.0.weight": torch.randn(width, width, generator=gen),
        "linear.0.bias": torch.randn(width, generator=gen),
    }


def test_load_hypernetwork_patch_and_loader_class(tmp_path):
    gen = torch.Generator().manual_seed(1)
    nets = tmp_path / "models" / "hypernetworks"
    nets.mkdir(parents=True)
    mlps = [_mlp(8, gen), _mlp(8, gen)]
    torch.save({8: mlps, "activation_func": "linear"}, nets / "tiny.pt")
    _runtime(tmp_path, "auto")
    module = importlib.import_module("comfy_extras.nodes_hypernetwork")
    patch = module.load_hypernetwork_patch(str(nets / "tiny.pt"), 0.5)
    q, k, v = (torch.randn(1, 3, 8, generator=gen) for _ in range(3))
    q2, k2, v2 = patch(q, k, v, {})
    w_k, b_k = mlps[0]["linear.0.weight"], mlps[0]["linear.0.bias"]
    w_v, b_v = mlps[1]["linear.0.weight"], mlps[1]["linear.0.bias"]
    assert torch.equal(q2, q)
    assert torch.allclose(k2, k + 0.5 * (k @ w_k.T + b_k), atol=1e-5)
    assert torch.allclose(v2, v + 0.5 * (v @ w_v.T + b_v), atol=1e-5)
    other = torch.randn(1, 3, 16, generator=gen)  # a width the file has no MLPs for: unchanged
    assert patch(q, other, other, {})[1] is other
    assert patch.to("cpu") is patch
    loader = module.HypernetworkLoader
    assert (loader.FUNCTION, loader.RETURN_TYPES) == ("load_hypernetwork", ("MODEL",))
    assert "tiny.pt" in loader.INPUT_TYPES()["required"]["hypernetwork_name"][0]
