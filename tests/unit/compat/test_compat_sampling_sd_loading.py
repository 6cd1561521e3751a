"""comfy.sd / comfy.lora for packs: load_checkpoint_guess_config gives diffgraph's working MODEL / CLIP / VAE
handles (comfy.sd.CLIP / VAE recognise them), and a LoRA state dict applied with load_lora_for_models (or
comfy.lora's key maps and patches) samples exactly like diffgraph's LoraLoader node."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from engine.diffusion.checkpoints.loader import load_checkpoint
from tests.factories.checkpoints import write_tiny_checkpoint
from tests.unit.compat.nodes_packs import run, runtime_with_packs

CKPT = "tiny_sd1.safetensors"
LORA = "tiny_lora.safetensors"


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    models = tmp_path_factory.mktemp("compat_sd") / "models"
    path = write_tiny_checkpoint(models / "checkpoints" / CKPT, "sd1", seed=9)
    unet = load_checkpoint(path).unet
    g = torch.Generator().manual_seed(1)
    lora = {}
    for key, weight in unet.state_dict().items():
        if key.endswith(("attn1.to_q.weight", "attn2.to_k.weight")):
            name = "lora_unet_" + key.removesuffix(".weight").replace(".", "_")
            lora[f"{name}.lora_up.weight"] = torch.randn(weight.shape[0], 2, generator=g)
            lora[f"{name}.lora_down.weight"] = torch.randn(2, weight.shape[1], generator=g)
            lora[f"{name}.alpha"] = torch.tensor(2.0)
    (models / "loras").mkdir(parents=True)
    save_file(lora, models / "loras" / LORA)
    return models


SD_PACK = """
import comfy.sd
import comfy.lora
import comfy.utils
import folder_paths
import nodes

class ViaComfySd:
    RETURN_TYPES = ("MODEL", "CLIP", "VAE", "MODEL", "MODEL")
    FUNCTION = "load"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"ckpt_name": (folder_paths.get_filename_list("checkpoints"),),
                             "lora_name": (folder_paths.get_filename_list("loras"),)}}

    def load(self, ckpt_name, lora_name):
        path = folder_paths.get_full_path("checkpoints", ckpt_name)
        model, clip, vae, clipvision = comfy.sd.load_checkpoint_guess_config(
            path, output_vae=True, output_clip=True, embedding_directory=folder_paths.get_folder_paths("embeddings"))
        assert clipvision is None
        assert isinstance(clip, comfy.sd.CLIP) and isinstance(vae, comfy.sd.VAE)
        assert not isinstance(model, comfy.sd.VAE)
        lora = comfy.utils.load_torch_file(folder_paths.get_full_path("loras", lora_name), safe_load=True)
        lora_model, lora_clip = comfy.sd.load_lora_for_models(model, clip, lora, 0.7, 0.0)
        assert lora_clip is clip  # strength 0 leaves that side as it is
        key_map = comfy.lora.model_lora_keys_unet(model)
        patched = model.clone()
        patched.add_patches(comfy.lora.load_lora(lora, key_map), 0.7)
        return (model, clip, vae, lora_model, patched)

NODE_CLASS_MAPPINGS = {"ViaComfySd": ViaComfySd}
"""


def sample(model: list, seed: int = 4) -> dict:
    return {
        "class_type": "KSampler",
        "inputs": {
            "model": model,
            "seed": seed,
            "steps": 2,
            "cfg": 3.0,
            "sampler_name": "euler",
            "scheduler": "normal",
            "positive": ["6", 0],
            "negative": ["7", 0],
            "latent_image": ["5", 0],
            "denoise": 1.0,
        },
    }


def test_load_checkpoint_guess_config_and_lora_state_dicts_match_the_builtin_nodes(tmp_path, models_dir):
    runtime = runtime_with_packs(tmp_path, {"sd_pack": SD_PACK}, models_dir)
    prompt = {
        "1": {"class_type": "ViaComfySd", "inputs": {"ckpt_name": CKPT, "lora_name": LORA}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox", "clip": ["1", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
        "16": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox", "clip": ["4", 1]}},
        "20": {
            "class_type": "LoraLoader",
            "inputs": {
                "model": ["4", 0],
                "clip": ["4", 1],
                "lora_name": LORA,
                "strength_model": 0.7,
                "strength_clip": 0.0,
            },
        },
        "30": sample(["1", 0]),
        "31": sample(["4", 0]),
        "32": sample(["1", 3]),
        "33": sample(["1", 4]),
        "34": sample(["20", 0]),
        "40": {"class_type": "VAEDecode", "inputs": {"samples": ["30", 0], "vae": ["1", 2]}},
        "41": {"class_type": "VAEDecode", "inputs": {"samples": ["31", 0], "vae": ["4", 2]}},
    }
    result = run(runtime, prompt)
    assert torch.equal(result.output("6")[0][0], result.output("16")[0][0])
    plain = result.output("30")["samples"]
    assert torch.equal(plain, result.output("31")["samples"])
    assert torch.equal(result.output("40"), result.output("41"))
    with_lora = result.output("34")["samples"]
    assert not torch.allclose(with_lora, plain)
    assert torch.equal(result.output("32")["samples"], with_lora)
    assert torch.equal(result.output("33")["samples"], with_lora)
