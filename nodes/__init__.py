"""The built-in node pack, registered exactly like a plugin: `MODULES` lists the modules whose `NODES`
the loader registers."""

MODULES = ["primitives"]
