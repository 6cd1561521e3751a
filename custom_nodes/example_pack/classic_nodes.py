"""ComfyUI-classic nodes: the same conventions ComfyUI custom nodes use."""


class ExampleInvertImage:
    """Inverts an IMAGE (B, H, W, C float in 0..1)."""

    CATEGORY = "example"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "invert"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",)}}

    def invert(self, image):
        return (1.0 - image,)


class ExampleShowText:
    """An output node that shows text in the UI."""

    CATEGORY = "example"
    RETURN_TYPES = ()
    FUNCTION = "show"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"forceInput": True})}}

    def show(self, text):
        return {"ui": {"text": [text]}}


NODE_CLASS_MAPPINGS = {"ExampleInvertImage": ExampleInvertImage, "ExampleShowText": ExampleShowText}
NODE_DISPLAY_NAME_MAPPINGS = {
    "ExampleInvertImage": "Invert Image (example)",
    "ExampleShowText": "Show Text (example)",
}
