"""A small node pack for the browser tests, written into a temporary custom_nodes/ folder.

It covers every widget kind the canvas builds (INT with control_after_generate, FLOAT with a step,
multi-line STRING, BOOLEAN, combo), typed sockets, a slow node reporting progress and an output node
that writes a real PNG and returns ComfyUI's `{"images": [...]}` UI data. No torch, no models.
"""

STUB_PACK = r"""
import time
import zlib
import struct
from engine import api


@api.node("StubLoader", category="stub/loaders", display_name="Stub Loader",
          inputs=[api.Combo("ckpt_name", ["tiny_a.safetensors", "tiny_b.safetensors"])],
          outputs=[api.Output("MODEL", "MODEL")])
def stub_loader(ckpt_name):
    return ({"ckpt": ckpt_name},)


@api.node("StubSampler", category="stub/sampling", display_name="Stub Sampler",
          inputs=[api.Input("model", "MODEL"),
                  api.Int("seed", 0, min=0, max=2**64 - 1, control_after_generate=True),
                  api.Int("steps", 4, min=1, max=10),
                  api.Float("cfg", 7.0, min=0.0, max=30.0, step=0.5),
                  api.String("prompt", "a cat", multiline=True),
                  api.Boolean("enabled", True),
                  api.Combo("sampler", ["euler", "heun", "dpm_2"])],
          outputs=[api.Output("LATENT", "LATENT")])
def stub_sampler(model, seed, steps, cfg, prompt, enabled, sampler, context):
    if prompt == "explode":
        raise ValueError("stub sampler exploded on purpose")
    from PIL import Image

    for i in range(steps):
        time.sleep(0.05)
        # A live preview frame with each step (sent as a binary WebSocket message).
        context.progress(i + 1, steps, Image.new("RGB", (32, 32), (40 * i % 256, 90, 200)))
    return ({"seed": seed, "steps": steps, "shade": seed % 256},)


@api.node("StubDecode", category="stub/latent", display_name="Stub Decode",
          inputs=[api.Input("samples", "LATENT")], outputs=[api.Output("IMAGE", "IMAGE")])
def stub_decode(samples):
    return (samples,)


def _png(width, height, shade):
    raw = b"".join(b"\x00" + bytes((shade, 120, 255 - shade)) * width for _ in range(height))
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@api.node("StubSave", category="stub/image", display_name="Stub Save", output_node=True,
          inputs=[api.Input("images", "IMAGE"), api.String("filename_prefix", "stub")])
def stub_save(images, filename_prefix, context):
    folders = context.folders
    name = f"{filename_prefix}_{images['seed']:05d}_{time.time_ns()}.png"
    (folders.output / name).write_bytes(_png(64, 48, images["shade"]))
    return api.NodeOutput(ui={"images": [{"filename": name, "subfolder": "", "type": "output"}]})


NODES = [stub_loader, stub_sampler, stub_decode, stub_save]
"""
