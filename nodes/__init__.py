"""The built-in node pack, registered exactly like a plugin: the loader imports every module of this
package (in name order) and registers the definitions listed in each module's `NODES`."""
