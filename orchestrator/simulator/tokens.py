"""The simulator's tokenizer (pure): the one rule for counting input and for generating replies.

A token is a word piece of at most six ASCII letters with an optional leading space, a run of
up to three digits with an optional leading space, a run of newlines, a run of spaces or tabs,
or any other single character (punctuation, one non-ASCII character). Replies are generated as
these tokens, so the count of any reply prefix cut between tokens is the number of output
tokens it was generated as.
"""

from __future__ import annotations

import re

_TOKEN = re.compile(r" ?[A-Za-z]{1,6}| ?[0-9]{1,3}|\n+|[ \t]+|.", re.DOTALL)


def tokenize(text: str) -> list[str]:
    """The tokens of ``text``; joined, they give ``text`` back."""
    return _TOKEN.findall(text)


def count_tokens(text: str) -> int:
    return sum(1 for _ in _TOKEN.finditer(text))
