"""A native diffgraph node: a declaration plus a pure function."""

from engine import api


@api.node(
    "ExampleRepeatText",
    category="example",
    display_name="Repeat Text (example)",
    inputs=[api.String("text", "hello"), api.Int("times", 2, min=1, max=100)],
    outputs=[api.Output(api.STRING, "text")],
)
def repeat_text(text: str, times: int):
    """Repeats a string."""
    return (text * times,)


NODES = [repeat_text]
