"""Small pieces of HTML for the pages, built safely: every piece of text is escaped.

Streamlit's ``unsafe_allow_html`` renders whatever it is given, so nothing from a
corpus, a prompt or a vocabulary reaches it without ``html.escape`` first.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

from lmcore.tokenizers import Tokenizer

# Light backgrounds that keep black text readable, cycled token by token.
TOKEN_COLORS = ("#fde68a", "#bfdbfe", "#bbf7d0", "#fecaca", "#e9d5ff", "#fed7aa", "#a5f3fc", "#f5d0fe")


def token_pieces(tok: Tokenizer, ids: Sequence[int]) -> list[tuple[str, list[int]]]:
    """Split encoded text back into displayable pieces: (text, ids that make it up).

    A byte-level BPE token can hold part of a multi-byte character (an emoji is
    four bytes); such tokens are grouped with their neighbours until the bytes
    form whole characters, so every piece shows real text.
    """
    pieces: list[tuple[str, list[int]]] = []
    buf, buf_ids = b"", []
    for i in ids:
        buf += tok.token_bytes(int(i))
        buf_ids.append(int(i))
        try:
            text = buf.decode("utf-8")
        except UnicodeDecodeError:
            if len(buf_ids) < 8:  # a UTF-8 character is at most 4 bytes: wait for the rest
                continue
            text = buf.decode("utf-8", errors="replace")
        pieces.append((text, buf_ids))
        buf, buf_ids = b"", []
    if buf_ids:
        pieces.append((buf.decode("utf-8", errors="replace"), buf_ids))
    return pieces


_MARKDOWN_SPECIALS = set("\\`*_{}[]()<>#+-.!|~$&")


def md(text: str) -> str:
    """Text for st.markdown shown literally: markdown punctuation backslash-escaped.

    The one escaper for names and messages that come from users (a file name,
    a run name, a URL, an error that quotes them) wherever Streamlit reads
    markdown: st.markdown, captions, toasts, st.error, widget labels and radio
    options. Selectbox and multiselect options are plain text: leave them as they are.
    Example: md("*bold*") -> "\\\\*bold\\\\*"
    """
    return "".join("\\" + ch if ch in _MARKDOWN_SPECIALS else ch for ch in str(text)).replace("\n", " ")


def _visible(text: str) -> str:
    """Escaped text with whitespace made visible: a space keeps its width, a newline shows ↵."""
    out = html.escape(text, quote=False)
    return out.replace("\t", "→\t").replace("\n", "↵<br>")


def token_spans_html(tok: Tokenizer, pieces: Sequence[tuple[str, Sequence[int]]]) -> str:
    """The pieces as coloured spans, one colour per token, ids and token strings on hover."""
    spans = []
    for k, (text, ids) in enumerate(pieces):
        color = TOKEN_COLORS[k % len(TOKEN_COLORS)]
        hover = " + ".join(f"id {i}: {tok.token_str(i)}" for i in ids)
        body = _visible(text) if text else "&#8203;"  # a special token has no text: keep a hoverable sliver
        spans.append(
            f'<span title="{html.escape(hover, quote=True)}" style="background:{color};'
            f'border-radius:3px;padding:1px 0;margin:0 1px;">{body}</span>'
        )
    return (
        '<div style="font-family:ui-monospace,SFMono-Regular,Menlo,monospace;white-space:pre-wrap;'
        'line-height:1.9;font-size:0.95rem;">' + "".join(spans) + "</div>"
    )


COPIED_COLOR = "#fecaca"  # a span found word for word in the training text


def novelty_html(tok: Tokenizer, ids: Sequence[int], span: Sequence[int]) -> str:
    """Generated text with the copied spans marked; ``span[i]`` is the copied run length of token i (0: new)."""
    parts, at = [], 0
    for text, piece_ids in token_pieces(tok, ids):
        longest = max(int(n) for n in span[at : at + len(piece_ids)])
        at += len(piece_ids)
        body = _visible(text) if text else "&#8203;"
        if longest:
            title = f"copied: part of a {longest}-token span found verbatim in the training text"
            parts.append(f'<span title="{html.escape(title, quote=True)}" style="background:{COPIED_COLOR};">{body}</span>')
        else:
            parts.append(f'<span title="new">{body}</span>')
    return (
        '<div style="font-family:ui-monospace,SFMono-Regular,Menlo,monospace;white-space:pre-wrap;'
        'line-height:1.9;font-size:0.95rem;">' + "".join(parts) + "</div>"
    )


TRAINED_COLOR = "#bbf7d0"  # a token the fine-tuning loss is taken on


def masked_example_html(tok: Tokenizer, ids: Sequence[int], mask: Sequence[bool]) -> str:
    """One fine-tuning example: the tokens the loss is taken on highlighted, the others greyed.

    Special tokens (``<|user|>``...) have no text of their own: they show as their names.
    """
    parts, at = [], 0
    for text, piece_ids in token_pieces(tok, ids):
        trained = any(mask[at : at + len(piece_ids)])
        at += len(piece_ids)
        body = _visible(text) if text else html.escape("".join(tok.token_str(i) for i in piece_ids), quote=False)
        title = "trained: the loss is taken on this token" if trained else "context only: no loss on this token"
        style = f"background:{TRAINED_COLOR};" if trained else "color:#6b7280;"
        if not text:
            style += "font-weight:600;"
        parts.append(f'<span title="{title}" style="{style}">{body}</span>')
    return (
        '<div style="font-family:ui-monospace,SFMono-Regular,Menlo,monospace;white-space:pre-wrap;'
        'line-height:1.9;font-size:0.95rem;">' + "".join(parts) + "</div>"
    )
