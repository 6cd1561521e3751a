"""Weight files -> models: reading, detection, config inference, layout conversion, loading.

The model files in ``engine.diffusion.models`` are plain torch and know nothing of files; this
package reads files and turns their keys and shapes into configs and models. It imports the models,
never the other way round (enforced by tests/unit/engine/test_engine_layers.py). Modules:

- ``io``: safetensors (memory-mapped) and weights-only ``.ckpt``/``.pt`` reading, ``CheckpointError``;
- ``spec``: key prefixes, ``ModelFamily``, ``CheckpointSpec``;
- ``detect``: ``detect_checkpoint``, which asks one detector per component: ``detect_unet`` (UNet and
  ControlNet configs), ``detect_vae``, ``detect_text`` (text encoders and the family), ``detect_prediction``
  (eps / v);
- ``diffusers_layout``: UNet and VAE key mapping between diffusers folders and single files;
- ``clip_text``: CLIP text towers as ``transformers`` models, and the OpenCLIP <-> HF key conversion;
- ``control``: ControlNet and T2I-Adapter files; ``upscalers``: ESRGAN / Real-ESRGAN files;
- ``loader``: ``load_checkpoint``, ``load_vae``, ``load_diffusers_folder``;
- ``flow_detect`` (with ``detect_mmdit``, ``detect_flux``) and ``flow_loader``: SD3/SD3.5 and FLUX.1 files
  (all-in-one, diffusion-model-only, fp8 scaled), see docs/models.md; ``flow_diffusers``: their diffusers
  folders (transformer key mapping, parts read into the all-in-one layout).

Import the submodules directly; this package file imports nothing. Tiny test checkpoints are written
by ``tests/factories/checkpoints.py`` (test code, outside the engine).
"""
