"""Loose ends of the ComfyUI layer: packs' NOISE objects (ComfyUI's `generate_noise`), the schedule in
transformer_options["sample_sigmas"] during SamplerCustomAdvanced, calc_cond_batch on the model object a
guidance hook receives, and the display node of nodes added by node expansion in the WebSocket messages."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from engine.handles.sampling import DisabledNoise, Guider, RandomNoise, custom_sample
from engine.runtime import sampling_library


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from engine.handles import load_checkpoint_handles
    from engine.memory.devices import DeviceInfo
    from engine.memory.manager import ModelManager
    from tests.factories.checkpoints import write_tiny_checkpoint

    path = write_tiny_checkpoint(tmp_path_factory.mktemp("loose_ends") / "sd1.safetensors", "sd1", seed=1)
    return load_checkpoint_handles(path, manager=ModelManager(DeviceInfo.cpu()), want_vae=False)[0]


def _conds() -> tuple[list, list]:
    gen = torch.Generator().manual_seed(3)
    return [[torch.randn(1, 5, 32, generator=gen), {}]], [[torch.randn(1, 5, 32, generator=gen), {}]]


def _latent() -> dict[str, Any]:
    return {"samples": torch.zeros(2, 4, 8, 8)}


SIGMAS = torch.tensor([6.0, 2.5, 0.9, 0.0])


class PackNoise:
    """A NOISE object as ComfyUI packs write them (Impact-Pack): `seed` and `generate_noise(latent)`,
    no `generate`."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.calls = 0

    def generate_noise(self, input_latent: dict[str, Any]) -> torch.Tensor:
        self.calls += 1
        gen = torch.Generator().manual_seed(self.seed)
        return torch.randn(input_latent["samples"].shape, generator=gen)


def _run(model, noise: Any, guider: Guider | None = None, sampler: str = "euler") -> torch.Tensor:
    positive, negative = _conds()
    guider = guider or Guider(model, "cfg", {"positive": positive, "negative": negative}, cfg=3.0)
    spec = sampling_library().sampler(sampler)
    with torch.no_grad():
        out, _ = custom_sample(noise, guider, spec, SIGMAS, _latent())
    return out["samples"]


# ---- 1. NOISE values --------------------------------------------------------------------------------


def test_a_packs_noise_with_only_generate_noise_drives_custom_sampling(model) -> None:
    """SamplerCustomAdvanced with a pack's noise object samples from that object's noise: the result equals
    a run whose own NOISE value yields the same tensor, and differs from no noise."""
    pack = PackNoise(21)
    got = _run(model, pack)
    assert pack.calls == 1

    class Same(DisabledNoise):
        def generate(self, latent):  # diffgraph's interface, the same noise as the pack's
            return PackNoise(21).generate_noise(dict(latent))

    assert torch.allclose(got, _run(model, Same()), atol=1e-6)
    assert not torch.allclose(got, _run(model, DisabledNoise()), atol=1e-3)


def test_a_packs_noise_seed_reaches_ancestral_samplers(model) -> None:
    """The pack object's `seed` seeds the per-step noise (two seeds, same initial noise: different runs)."""

    class FixedInitial(PackNoise):
        def generate_noise(self, input_latent):
            return PackNoise(5).generate_noise(input_latent)

    a = _run(model, FixedInitial(1), sampler="euler_ancestral")
    b = _run(model, FixedInitial(2), sampler="euler_ancestral")
    assert not torch.allclose(a, b, atol=1e-4)


def test_diffgraph_noise_values_answer_comfyuis_generate_noise_and_seed() -> None:
    from engine.diffusion.sampling.ksampler import prepare_noise

    latent = {"samples": torch.zeros(2, 4, 8, 8), "batch_index": [3, 4]}
    noise = RandomNoise(17)
    assert noise.seed == 17
    assert torch.equal(noise.generate_noise(latent), prepare_noise(latent["samples"], 17, [3, 4]))
    assert torch.equal(noise.generate_noise(latent), noise.generate(latent))
    empty = DisabledNoise()
    assert empty.seed == 0 and torch.equal(empty.generate_noise(latent), torch.zeros(2, 4, 8, 8))


def test_a_noise_value_without_either_method_is_refused_by_name(model) -> None:
    with pytest.raises(TypeError, match="generate_noise"):
        _run(model, object())


# ---- 2. transformer_options["sample_sigmas"] ----------------------------------------------------------


def _recording_clone(model) -> tuple[Any, list[Any]]:
    """A clone of the MODEL whose unet function wrapper (how packs read the schedule) records
    transformer_options["sample_sigmas"] at every model call."""
    seen: list[Any] = []

    def wrapper(apply_model, args):
        seen.append(args["c"]["transformer_options"].get("sample_sigmas"))
        return apply_model(args["input"], args["timestep"], **args["c"])

    clone = model.clone()
    clone.set_model_unet_function_wrapper(wrapper)
    return clone, seen


def test_custom_sampling_puts_the_schedule_in_sample_sigmas_for_the_models_patches(model) -> None:
    """The wrapper sees the run's sigmas in every call, as in ComfyUI's CFGGuider.inner_sample; the MODEL's
    own options are left without them."""
    clone, seen = _recording_clone(model)
    positive, negative = _conds()
    guider = Guider(clone, "cfg", {"positive": positive, "negative": negative}, cfg=3.0)
    _run(model, RandomNoise(1), guider)
    assert len(seen) == 3 and all(s is not None and torch.equal(s.cpu(), SIGMAS) for s in seen)
    assert "sample_sigmas" not in clone.sampling_options().get("transformer_options", {})


def test_a_pack_guider_reading_sample_sigmas_sees_them_in_custom_sampling(model) -> None:
    """A CFGGuider subclass overriding predict_noise (KJNodes' guiders) finds the schedule in
    model_options["transformer_options"]["sample_sigmas"] when diffgraph's SamplerCustomAdvanced runs it."""
    from engine.comfy_compat.comfy_sampling import CFGGuider, calc_cond_batch, cfg_function

    class Reading(CFGGuider):
        seen: list[Any] = []

        def predict_noise(self, x, timestep, model_options=None, seed=None):
            options = model_options or {}
            self.seen.append(options.get("transformer_options", {}).get("sample_sigmas"))
            conds = [self.conds["positive"], self.conds["negative"]]
            cond, uncond = calc_cond_batch(self.inner_model, conds, x, timestep, options)
            return cfg_function(self.inner_model, cond, uncond, self.cfg, x, timestep, options)

    guider = Reading(model)
    positive, negative = _conds()
    guider.set_conds(positive, negative)
    guider.set_cfg(3.0)
    _run(model, RandomNoise(1), guider)  # type: ignore[arg-type]
    assert len(Reading.seen) == 3 and all(torch.equal(s.cpu(), SIGMAS) for s in Reading.seen)


def test_comfyuis_cfg_guider_without_override_also_passes_sample_sigmas(model) -> None:
    from engine.comfy_compat.comfy_sampling import CFGGuider

    clone, seen = _recording_clone(model)
    guider = CFGGuider(clone)
    positive, negative = _conds()
    guider.set_conds(positive, negative)
    guider.set_cfg(3.0)
    _run(model, RandomNoise(1), guider)  # type: ignore[arg-type]
    assert len(seen) == 3 and all(s is not None and torch.equal(s.cpu(), SIGMAS) for s in seen)


def test_the_ksampler_also_puts_its_schedule_in_sample_sigmas(model) -> None:
    """KSampler runs set it too (ComfyUI sets it in every sampling run): KJNodes' unet wrappers on a MODEL
    sampled by the plain KSampler look the current step up in it."""
    from engine.handles.sampling import ksample

    seen: list[Any] = []

    def wrapper(apply_model, args):
        steps = args["c"]["transformer_options"]["sample_sigmas"]
        seen.append((steps, bool((steps == args["timestep"][0]).any())))
        return apply_model(args["input"], args["timestep"], **args["c"])

    clone = model.clone()
    clone.set_model_unet_function_wrapper(wrapper)
    positive, negative = _conds()
    library = sampling_library()
    with torch.no_grad():
        ksample(
            clone,
            seed=1,
            steps=3,
            cfg=3.0,
            sampler_name="euler",
            scheduler="karras",
            positive=positive,
            negative=negative,
            latent=_latent(),
            library=library,
        )
    expected = library.schedulers.sigmas("karras", model.model_sampling, 3)
    assert len(seen) == 3 and all(torch.allclose(s.cpu(), expected) and hit for s, hit in seen)


# ---- 3. calc_cond_batch on a guidance hook's model ---------------------------------------------------


def test_comfy_calc_cond_batch_accepts_the_model_a_post_cfg_function_receives(model) -> None:
    """comfy.samplers.calc_cond_batch(args["model"], ...) inside a post-CFG function (perturbed-attention
    guidance's pattern) evaluates the conditioning: with the hook's own options it reproduces the
    guidance's positive prediction, and a None entry gives zeros."""
    from engine.comfy_compat.comfy_sampling import calc_cond_batch
    from engine.diffusion.sampling.guidance import CFGDenoiser

    checks: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def post(args):
        again, nothing = calc_cond_batch(
            args["model"], [args["cond"], None], args["input"], args["sigma"], args["model_options"]
        )
        checks.append((again, args["cond_denoised"], nothing))
        return args["denoised"]

    clone = model.clone()
    clone.set_model_sampler_post_cfg_function(post)
    positive, negative = _conds()
    x, sigma = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4)), torch.tensor([2.0])
    with model.use(), torch.no_grad():
        CFGDenoiser(
            clone.diffusion_model(), positive, negative, 3.0, like=x, model_options=clone.sampling_options()
        )(x, sigma)
    (again, cond, nothing) = checks[0]
    assert torch.allclose(again, cond, atol=1e-5) and torch.equal(nothing, torch.zeros_like(x))


def test_comfy_calc_cond_batch_still_refuses_other_objects() -> None:
    from engine.comfy_compat.comfy_sampling import calc_cond_batch

    with pytest.raises(TypeError, match="got str"):
        calc_cond_batch("model", [None], torch.zeros(1, 4, 8, 8), torch.tensor([1.0]))


# ---- 5. display node of expanded nodes in the WebSocket messages --------------------------------------


class RecordingHub:
    """Where a PromptReporter posts: keeps each (type, data) message instead of sending it to sockets."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, dict[str, Any]]] = []

    def post(self, event: str, data: dict[str, Any], sid: str | None = None) -> None:
        self.messages.append((event, data))

    def post_binary(self, payload: bytes, sid: str | None = None) -> None:
        pass

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [data for event, data in self.messages if event == kind]


def _expanding_executor():
    from engine import api
    from engine.execution.cache import OutputCache
    from engine.execution.executor import Executor
    from engine.registry import NodeRegistry

    @api.node("LEStep", inputs=[api.Input("x", "INT", force_input=True)], outputs=["INT"])
    def step(x, context):
        context.progress(1, 2)
        context.progress(2, 2)
        return (x + 1,)

    @api.node("LEShow", inputs=[api.Input("x", "INT", force_input=True)], output_node=True)
    def show(x):
        return api.NodeOutput(ui={"values": [x]})

    @api.node(
        "LEOuter",
        inputs=[api.Int("x", 0)],
        outputs=["INT"],
        hidden={"unique_id": api.HIDDEN_UNIQUE_ID},
    )
    def outer(x, unique_id):
        """Expands into an inner expanding node, an output node shown as a chosen node, and a step."""
        graph = {
            f"{unique_id}.0.0.1": {"class_type": "LEInner", "inputs": {"x": x}},
            f"{unique_id}.0.0.2": {
                "class_type": "LEShow",
                "inputs": {"x": [f"{unique_id}.0.0.1", 0]},
                "override_display_id": "9",
            },
        }
        return {"result": ([f"{unique_id}.0.0.1", 0],), "expand": graph}

    @api.node(
        "LEInner",
        inputs=[api.Int("x", 0)],
        outputs=["INT"],
        hidden={"unique_id": api.HIDDEN_UNIQUE_ID},
    )
    def inner(x, unique_id):
        graph = {f"{unique_id}.1": {"class_type": "LEStep", "inputs": {"x": x}}}
        return {"result": ([f"{unique_id}.1", 0],), "expand": graph}

    registry = NodeRegistry()
    for definition in (step, show, outer, inner):
        registry.register(definition)
    return Executor(registry, OutputCache())


PROMPT = {
    "5": {"class_type": "LEOuter", "inputs": {"x": 3}},
    "9": {"class_type": "LEShow", "inputs": {"x": ["5", 0]}},
}


def test_expanded_nodes_events_name_their_display_parent_and_real_node() -> None:
    from engine.execution import events as ev
    from engine.graph.api_format import parse_api_workflow
    from tests.unit.engine.event_sinks import CollectingSink

    sink = CollectingSink()
    assert _expanding_executor().run(parse_api_workflow(PROMPT), sink=sink).ok
    running = {e.node_id: e for e in sink.of_type(ev.NodeExecuting)}
    assert running["5"].display_node is None and running["5"].parent_node is None
    inner, step = running["5.0.0.1"], running["5.0.0.1.1"]
    assert (inner.display_node, inner.parent_node, inner.real_node) == ("5", "5", "5")
    # added by an added node: shown as the prompt's node at the top of the chain
    assert (step.display_node, step.parent_node, step.real_node) == ("5", "5.0.0.1", "5")
    shown = {e.node_id: e for e in sink.of_type(ev.NodeExecuted)}
    assert (shown["5.0.0.2"].display_node, shown["5.0.0.2"].parent_node) == ("9", "5")  # override_display_id
    assert shown["9"].display_node is None


def test_websocket_messages_carry_the_display_node_of_expanded_nodes() -> None:
    """executing / executed name the node that ran and, as display_node, the node the canvas highlights;
    progress_state entries carry display, parent and real node ids; progress keeps ComfyUI's shape."""
    from engine.graph.api_format import parse_api_workflow
    from engine.server.protocol import PromptReporter

    hub = RecordingHub()
    reporter = PromptReporter(hub, "p1", None)  # type: ignore[arg-type]
    assert _expanding_executor().run(parse_api_workflow(PROMPT), sink=reporter).ok
    executing = {m["node"]: m["display_node"] for m in hub.of("executing")}
    assert executing == {"5": "5", "5.0.0.1": "5", "5.0.0.1.1": "5", "5.0.0.2": "9", "9": "9"}
    executed = {m["node"]: m["display_node"] for m in hub.of("executed")}
    assert executed == {"5.0.0.2": "9", "9": "9"}
    progress = [m for m in hub.of("progress") if m["node"] == "5.0.0.1.1"]
    assert [set(m) for m in progress] == [{"value", "max", "prompt_id", "node"}] * 2
    last = hub.of("progress_state")[-1]["nodes"]
    step = last["5.0.0.1.1"]
    assert (step["display_node_id"], step["parent_node_id"], step["real_node_id"]) == ("5", "5.0.0.1", "5")
    assert (last["9"]["display_node_id"], last["9"]["parent_node_id"], last["9"]["real_node_id"]) == (
        "9",
        None,
        "9",
    )
    assert reporter.current_node == "9"


# ---- 4. load_diffusion_model_state_dict with custom_operations ----------------------------------------


def test_a_state_dict_with_custom_operations_is_built_with_the_packs_layers() -> None:
    """comfy.sd.load_diffusion_model_state_dict(sd, model_options={"custom_operations": ops}) builds the UNet
    from the pack's layer classes holding the pack's tensors as given (float16 here, as quantized GGUF
    tensors stay quantized in ComfyUI), and it computes what the plain load computes."""
    from engine.comfy_compat.sd_bridge import diffusion_model_from_state_dict
    from engine.diffusion.models.unet import UNetConfig
    from engine.execution.context import MODEL_MANAGER
    from engine.handles.comfy_surface.ops import manual_cast
    from engine.memory.devices import DeviceInfo
    from engine.memory.manager import ModelManager
    from tests.factories.checkpoints import random_state_dict, unet_shapes

    class PackOps(manual_cast):
        calls = 0

        class Linear(manual_cast.Linear):
            def forward_comfy_cast_weights(self, input, *args, **kwargs):
                PackOps.calls += 1
                return super().forward_comfy_cast_weights(input, *args, **kwargs)

    # SD1's cross-attention width: a UNet-only state dict names its family only through it.
    unet_sd = random_state_dict(unet_shapes(UNetConfig.tiny(context_dim=768)), seed=2)
    stored = {
        "model.diffusion_model." + k: v.half() if v.ndim == 2 else v.float() for k, v in unet_sd.items()
    }
    services = {MODEL_MANAGER: ModelManager(DeviceInfo.cpu())}
    mine = diffusion_model_from_state_dict(services, stored, {"custom_operations": PackOps})
    plain = diffusion_model_from_state_dict(services, {k: v.float() for k, v in stored.items()})
    layer = mine.unet.time_embed[0]
    assert isinstance(layer, PackOps.Linear) and layer.weight.dtype == torch.float16
    assert mine.family == plain.family == "sd1"
    x, t, c = torch.randn(1, 4, 8, 8), torch.tensor([400.0]), torch.randn(1, 5, 768)
    with torch.no_grad():
        got, want = mine.unet(x, t, c), plain.unet.float()(x, t, c)
    assert PackOps.calls > 0 and torch.allclose(got, want, atol=1e-4)


class Packed(torch.Tensor):
    """A quantized-style tensor as ComfyUI-GGUF's: the data are rows of packed values (2-D whatever the
    weight's rank) and `.shape` reports the real shape."""

    tensor_shape: torch.Size

    @staticmethod
    def pack(value: torch.Tensor) -> Packed:
        out = value.detach().reshape(-1, 8).as_subclass(Packed)
        out.tensor_shape = value.shape
        return out

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        # Results of detach / Parameter wrapping stay packed with their source's real shape (the pack's
        # tensor class does the same).
        out = super().__torch_function__(func, types, args, kwargs or {})
        source = next((a for a in args if isinstance(a, Packed) and "tensor_shape" in a.__dict__), None)
        if isinstance(out, Packed) and source is not None and "tensor_shape" not in out.__dict__:
            out.tensor_shape = source.tensor_shape
        return out

    @property  # type: ignore[override]
    def shape(self) -> torch.Size:
        return self.__dict__.get("tensor_shape") or self.size()

    def unpacked(self) -> torch.Tensor:
        return self.as_subclass(torch.Tensor).reshape(self.tensor_shape)


def test_a_packed_state_dict_is_detected_from_its_real_shapes() -> None:
    """SD1's 1x1-convolution proj_in / proj_out weights, packed into 2-D rows, still give SD1's convolutional
    transformer input (detection reads `.shape`, not the packed data's rank), and the pack's layers unpack
    them as they run."""
    from engine.comfy_compat.sd_bridge import diffusion_model_from_state_dict
    from engine.diffusion.models.unet import UNetConfig
    from engine.execution.context import MODEL_MANAGER
    from engine.handles.comfy_surface.ops import manual_cast
    from engine.memory.devices import DeviceInfo
    from engine.memory.manager import ModelManager
    from tests.factories.checkpoints import random_state_dict, unet_shapes

    class PackOps(manual_cast):
        class Conv2d(manual_cast.Conv2d):
            def forward(self, input, *args, **kwargs):
                w = self.weight
                real = w.unpacked() if isinstance(w, Packed) else w
                return self._conv_forward(input, real, self.bias)

    unet_sd = random_state_dict(unet_shapes(UNetConfig.tiny(context_dim=768)), seed=4)
    packed = {k: Packed.pack(v) if ".proj_" in k and v.ndim == 4 else v for k, v in unet_sd.items()}
    assert packed["input_blocks.1.1.proj_in.weight"].ndim == 2
    services = {MODEL_MANAGER: ModelManager(DeviceInfo.cpu())}
    mine = diffusion_model_from_state_dict(services, packed, {"custom_operations": PackOps})
    plain = diffusion_model_from_state_dict(services, unet_sd)
    block = mine.unet.input_blocks[1][1]
    assert not block.use_linear and isinstance(block.proj_in, PackOps.Conv2d)
    x, t, c = torch.randn(1, 4, 8, 8), torch.tensor([400.0]), torch.randn(1, 5, 768)
    with torch.no_grad():
        assert torch.allclose(mine.unet(x, t, c), plain.unet.float()(x, t, c), atol=1e-4)
