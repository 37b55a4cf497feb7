"""The TL;DR prompt (SPEC §1), used for training, augmentation and generation alike."""

from __future__ import annotations

import re

PROMPT_END = "TL;DR:"


def format_prompt(post: str, subreddit: str | None = None, title: str | None = None) -> str:
    """``SUBREDDIT: r/{sub}\\nTITLE: {title}\\nPOST: {post}\\nTL;DR:``; missing fields are left out (SPEC §1)."""
    lines = []
    if subreddit:
        lines.append(f"SUBREDDIT: r/{subreddit}")
    if title:
        lines.append(f"TITLE: {title}")
    lines.append(f"POST: {post}")
    lines.append(PROMPT_END)
    return "\n".join(lines)


_HEADER = re.compile(r"^(SUBREDDIT|TITLE):[ \t]*(.*?)[ \t]*$", re.M)


def parse_prompt(prompt: str) -> dict[str, str | None] | None:
    """Inverse of :func:`format_prompt` for CarperAI/openai_summarize_tldr prompts.

    Returns ``{"post", "subreddit", "title"}`` (subreddit without ``r/``), or None when the prompt has
    no ``POST:`` section. Lenient about the trailing ``TL;DR:`` and surrounding whitespace, as the
    public dump varies.
    """
    idx = prompt.find("POST:")
    if idx < 0:
        return None
    head, body = prompt[:idx], prompt[idx + len("POST:"):]
    body = body.rstrip()
    if body.endswith(PROMPT_END):
        body = body[: -len(PROMPT_END)]
    fields: dict[str, str | None] = {"post": body.strip(), "subreddit": None, "title": None}
    for key, value in _HEADER.findall(head):
        value = value.strip()
        if key == "SUBREDDIT":
            fields["subreddit"] = value[2:] if value.startswith("r/") else value
        else:
            fields["title"] = value
    return fields
