"""The ComfyUI compatibility layer: what lets ComfyUI's custom-node packs import and run unchanged.

Two halves:

* this package (`engine.comfy_compat`): the engine side - the binding of one runtime to the environment
  modules (`binding.py`) and the adapters they are built from;
* `env/`: a folder (not a package) holding the top-level modules ComfyUI packs import - `folder_paths`,
  `server`, `nodes`, `comfy.*`, `comfy_extras.*`, `comfy_api.*`, `comfy_execution.*`, `latent_preview`,
  `node_helpers`. It is put on `sys.path` only when a runtime loads custom packs
  (`binding.install_environment`), so those names exist for packs and for nothing else: engine code never
  imports them (tests/unit/engine/test_engine_layers.py enforces it). Each is a thin adapter over
  diffgraph's own engine, not a second engine.
"""
