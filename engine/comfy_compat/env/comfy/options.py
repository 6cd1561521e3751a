"""ComfyUI's `comfy.options`: whether `comfy.cli_args` parses the real command line. In diffgraph it
never does (the command line is diffgraph's own); `args` reflects diffgraph's options instead."""

args_parsing = False


def enable_args_parsing(enable: bool = True) -> None:
    global args_parsing
    args_parsing = enable
