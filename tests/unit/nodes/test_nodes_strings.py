"""The utils/string nodes and PreviewAny, against hand-worked results."""

from __future__ import annotations

import re

import pytest
import torch

from tests.unit.nodes.node_support import builtin

S = builtin("strings")


def test_concatenate_substring_length():
    assert S.string_concatenate("ab", "cd", ", ") == ("ab, cd",)
    assert S.string_concatenate("ab", "cd", "") == ("abcd",)
    assert S.string_substring("hello world", 6, 11) == ("world",)
    assert S.string_substring("hello world", -5, -1) == ("worl",)
    assert S.string_substring("abc", 2, 1) == ("",)
    assert S.string_length("héllo\n") == (6,)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("UPPERCASE", "HELLO WORLD-X"),
        ("lowercase", "hello world-x"),
        ("Capitalize", "Hello world-x"),
        ("Title Case", "Hello World-X"),
    ],
)
def test_case_converter(mode, expected):
    assert S.case_converter("hELLO wORLD-x", mode) == (expected,)


def test_trim_replace_contains_compare():
    assert S.string_trim("  a b \n", "Both") == ("a b",)
    assert S.string_trim("  a b \n", "Left") == ("a b \n",)
    assert S.string_trim("  a b \n", "Right") == ("  a b",)
    assert S.string_replace("a.b.c", ".", "-") == ("a-b-c",)  # plain text, not a pattern
    assert S.string_contains("Hello", "ell", True) == (True,)
    assert S.string_contains("Hello", "ELL", True) == (False,)
    assert S.string_contains("Hello", "ELL", False) == (True,)
    assert S.string_compare("Prefix-body", "prefix", "Starts With", False) == (True,)
    assert S.string_compare("Prefix-body", "prefix", "Starts With", True) == (False,)
    assert S.string_compare("file.PNG", ".png", "Ends With", False) == (True,)
    assert S.string_compare("same", "same", "Equal", True) == (True,)
    assert S.string_compare("same", "Same", "Equal", True) == (False,)


def test_regex_match_flags_and_invalid_pattern():
    assert S.regex_match("Cat\ndog", "^dog", False, False, False) == (False,)
    assert S.regex_match("Cat\ndog", "^dog", False, True, False) == (True,)  # MULTILINE
    assert S.regex_match("Cat", "cat", True, False, False) == (True,)  # IGNORECASE
    assert S.regex_match("a\nb", "a.b", False, False, True) == (True,)  # DOTALL
    assert S.regex_match("a\nb", "a.b", False, False, False) == (False,)
    assert S.regex_match("text", "(", True, False, False) == (False,)


def test_regex_extract_modes():
    text = "id=12, id=345; x=9"
    pattern = r"id=(\d+)"
    assert S.regex_extract(text, pattern, "First Match", True, False, False, 1) == ("id=12",)
    assert S.regex_extract(text, pattern, "All Matches", True, False, False, 1) == ("12\n345",)
    assert S.regex_extract(text, r"id=\d+", "All Matches", True, False, False, 1) == ("id=12\nid=345",)
    assert S.regex_extract(text, pattern, "First Group", True, False, False, 1) == ("12",)
    assert S.regex_extract(text, pattern, "First Group", True, False, False, 2) == ("",)  # no group 2
    assert S.regex_extract(text, pattern, "All Groups", True, False, False, 1) == ("12\n345",)
    assert S.regex_extract(text, r"(\w)=(\d+)", "All Groups", True, False, False, 2) == ("12\n345\n9",)
    assert S.regex_extract(text, "nomatch", "First Match", True, False, False, 1) == ("",)
    assert S.regex_extract(text, "[", "First Match", True, False, False, 1) == ("",)


def test_regex_replace_groups_count_and_defaults():
    assert S.regex_replace("a1 b22 c333", r"(\d+)", r"<\1>") == ("a<1> b<22> c<333>",)
    assert S.regex_replace("a1 b22 c333", r"\d+", "#", count=2) == ("a# b# c333",)
    assert S.regex_replace("ABC abc", "abc", "x") == ("x x",)  # case-insensitive by default
    assert S.regex_replace("ABC abc", "abc", "x", case_insensitive=False) == ("ABC x",)
    with pytest.raises(re.error):
        S.regex_replace("abc", "(", "x")


def test_preview_any_renders_values_as_text():
    def shown(value):
        return S.preview_any(value).ui["text"][0]

    assert shown("plain") == "plain"
    assert shown(3) == "3" and shown(2.5) == "2.5" and shown(True) == "True"
    assert shown({"a": [1, 2]}) == '{"a": [1, 2]}'
    assert shown(None) == "None"
    assert shown(torch.zeros(2)) == str(torch.zeros(2))  # not JSON: str()
