"""Byte-level byte-pair encoding (BPE), trained on a corpus, for any Unicode text.

How it works (Sennrich et al. 2016, as used by GPT-2 and later):

1. Pre-split. A regular expression cuts text into chunks (words with their
   leading space, runs of digits, punctuation, whitespace), so that merges never
   cross a word boundary. The default is the GPT-4 ("cl100k") pattern; the
   GPT-2 pattern is available as ``pattern="gpt2"``.
2. Bytes. Each chunk is UTF-8 encoded; ids 0..255 are the 256 bytes, so every
   string has an encoding (byte fallback) and ``decode(encode(s)) == s``.
3. Merges. Training repeatedly finds the most frequent adjacent pair of ids
   inside chunks and gives it the next id (256, 257, ...). Ties go to the
   smallest pair, so training is deterministic.
4. Special tokens (``<|bos|>``) come after the merges. They are never produced
   from plain text: ``encode("<|bos|>")`` gives the ids of its seven bytes,
   unless the caller passes ``allowed_special``. They decode to nothing: a
   special token is a boundary, not text (as in the character tokenizer).

Example: trained on "ab ab abc" with vocab_size=260, the chunks are "ab",
" ab", " abc"; the merges are (a, b) -> 256, (" ", 256) -> 257, (257, c) -> 258,
and ``encode("abc ab") == [256, 99, 257]``.

Lone surrogates (``"\\ud800"``) are not Unicode text and have no UTF-8 form;
``encode`` and ``train`` raise ``TokenizerError`` for them rather than invent
bytes. Ids whose bytes are not valid UTF-8 on their own (half of a multi-byte
character, as a model may sample) decode with U+FFFD replacement characters.

Training counts each distinct chunk once, with its frequency, then keeps pair
counts up to date incrementally: a merge touches only the chunks that contain
the merged pair, and a lazy max-heap finds the next best pair without a rescan.
Words are held as strings of code points, so finding and replacing a pair
runs in C. Encoding merges each chunk by rank with a heap, in O(n log n)
(a megabyte without a space is no problem), and caches the ids of each
distinct chunk.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from typing import Any

import regex

from lmcore.errors import TokenizerError
from lmcore.tokenizers.base import BOS_TOKEN, Tokenizer, printable

# Pre-split patterns, by name. Checkpoints store the name, never a pattern: a
# regular expression read from a file could be made to run for ever.
PATTERNS: dict[str, str] = {
    # GPT-4 (cl100k): case-insensitive contractions, a letter run with one
    # leading non-letter, numbers in groups of at most three, punctuation with
    # its trailing newlines, newline runs with the whitespace before them.
    "gpt4": (
        r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}"""
        r"""| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
    ),
    # GPT-2: lower-case contractions, and an optional space before a letter,
    # number or punctuation run.
    "gpt2": r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
}
DEFAULT_PATTERN = "gpt4"
DEFAULT_VOCAB_SIZE = 512
FORMAT_VERSION = 1
# Limits on a tokenizer's size, checked from its declared sizes before anything is
# built: a merge may join a token with itself, so 40 merges could ask for 2^41 bytes.
MAX_MERGES = 1 << 18  # 262,144: more than twice the largest GPT vocabularies
MAX_TOKEN_BYTES = 1 << 26  # the bytes of all tokens together (64 MiB)
MAX_SPECIAL_TOKENS = 1024
MAX_SPECIAL_CHARS = 256  # in one special token

# Past this many distinct chunks the encode cache starts again, which bounds
# its memory on very large or very varied texts.
_CACHE_LIMIT = 200_000

_SURROGATE = regex.compile(r"[\ud800-\udfff]")

# A newline between a non-space and a letter ends a chunk under every pattern
# above: no alternative matches across it, and the whitespace run it belongs
# to is just itself. (After a space it is not safe: GPT-2's pattern splits
# "\n\nB" as "\n", "\n", "B" but a piece ending in "\n\n" as one chunk.)
_SAFE_CUT = regex.compile(r"(?<=\S)\n(?=\p{L})")


def text_pieces(text: str, size: int = 1 << 20) -> Iterator[str]:
    """Cut ``text`` into pieces of about ``size`` characters, each ending at a newline before a letter.

    Pre-splitting (or encoding) the pieces one by one gives exactly the
    chunks (or ids) of the whole text, with bounded temporary memory.
    """
    start = 0
    while len(text) - start > size:
        m = _SAFE_CUT.search(text, start + size)
        if m is None:
            break
        yield text[start : m.end()]
        start = m.end()
    yield text[start:]


def _check_encodable(text: str) -> None:
    """TokenizerError naming the first lone surrogate, if the text holds one."""
    m = _SURROGATE.search(text)
    if m is not None:
        raise TokenizerError(
            f"the text holds a lone surrogate U+{ord(m.group()):04X} at position {m.start()}, "
            "which is not valid Unicode and has no UTF-8 bytes; remove it or re-read the text as UTF-8"
        )


def merge_pair(ids: Sequence[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every occurrence of ``pair`` in ``ids`` by ``new_id``, left to right.

    Example: ids=[97, 97, 97, 98], pair=(97, 97), new_id=256 -> [256, 97, 98]
    """
    a, b = pair
    out: list[int] = []
    i, n = 0, len(ids)
    while i < n:
        if i + 1 < n and ids[i] == a and ids[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def learn_merges(
    words: Sequence[bytes | Sequence[int]],
    freqs: Sequence[int],
    n_merges: int,
    first_id: int = 256,
    progress: Callable[[int, int], None] | None = None,
) -> list[tuple[int, int]]:
    """The BPE merges of a bag of words (byte strings) with their frequencies.

    Each merge takes the most frequent adjacent pair (occurrences within a word
    counted with overlaps, weighted by the word's frequency; ties to the
    smallest pair), gives it id ``first_id + k`` and rewrites the words that
    contain it. Stops early when no pair is left.

    Example: words=[b"aaab"], freqs=[1], n_merges=2 -> [(97, 97), (97, 98)]
    (aa occurs twice in aaa; then 256 a b has the tied pairs (256, 97) and
    (97, 98), and the smaller wins).
    """
    # A word is held as a str with one code point per id (chr(id)), so finding
    # and replacing a pair runs in C (str.replace merges left to right, like
    # merge_pair), and a pair is a 2-character str whose order is the order of
    # the (a, b) tuples, which the tie rule needs.
    text_words = [w.decode("latin-1") if isinstance(w, bytes) else "".join(map(chr, w)) for w in words]
    stats: dict[str, int] = defaultdict(int)  # pair -> weighted count
    where: dict[str, set[int]] = defaultdict(set)  # pair -> words that may hold it
    for wi, w in enumerate(text_words):
        f = freqs[wi]
        for pair, c in Counter(map(str.__add__, w, w[1:])).items():
            stats[pair] += c * f
            where[pair].add(wi)
    # A max-heap by count with lazy deletion: every count change pushes a new
    # entry, and entries whose count is no longer current are skipped on pop.
    heap = [(-c, pair) for pair, c in stats.items()]
    heapq.heapify(heap)
    merges: list[tuple[int, int]] = []
    report_every = max(1, n_merges // 100)
    while len(merges) < n_merges and heap:
        neg, pair = heapq.heappop(heap)
        if stats.get(pair, 0) != -neg or neg == 0:
            continue
        new_id = first_id + len(merges)
        merges.append((ord(pair[0]), ord(pair[1])))
        a, b = pair
        x = chr(new_id)
        delta: dict[str, int] = defaultdict(int)
        for wi in where.pop(pair, ()):
            w = text_words[wi]
            if pair not in w:
                continue  # a stale entry: an earlier merge already consumed the pair here
            new = w.replace(pair, x)
            text_words[wi] = new
            f = freqs[wi]
            # Only the neighbourhood of each merged run changes. A run of k new
            # tokens between neighbours L and R was L (a b)^k R: it loses the
            # pairs La, k x ab, (k-1) x ba, bR and gains Lx, (k-1) x xx, xR.
            n = len(new)
            i = new.find(x)
            while i != -1:
                j = i
                while j + 1 < n and new[j + 1] == x:
                    j += 1
                k = j - i + 1
                delta[pair] -= k * f
                if k > 1:
                    delta[b + a] -= (k - 1) * f
                    delta[x + x] += (k - 1) * f
                    where[x + x].add(wi)
                if i > 0:
                    left = new[i - 1]
                    delta[left + a] -= f
                    delta[left + x] += f
                    where[left + x].add(wi)
                if j + 1 < n:
                    right = new[j + 1]
                    delta[b + right] -= f
                    delta[x + right] += f
                    where[x + right].add(wi)
                i = new.find(x, j + 1)
        for p, d in delta.items():
            if d:
                c = stats[p] + d
                stats[p] = c
                if c > 0:
                    heapq.heappush(heap, (-c, p))
        assert stats[pair] == 0, "a merged pair must have no occurrences left"
        del stats[pair]
        if progress is not None and (len(merges) % report_every == 0 or len(merges) == n_merges):
            progress(len(merges), n_merges)
    return merges


def _check_counts(n_merges: int, specials: Sequence[Any]) -> None:
    """TokenizerError when there are more merges or special tokens than the limits allow."""
    if n_merges > MAX_MERGES:
        raise TokenizerError(
            f"a BPE tokenizer with {n_merges:,} merges is over the limit of {MAX_MERGES:,}; "
            "the tokenizer data is damaged or hostile"
        )
    if len(specials) > MAX_SPECIAL_TOKENS or any(isinstance(s, str) and len(s) > MAX_SPECIAL_CHARS for s in specials):
        raise TokenizerError(
            f"a BPE tokenizer has at most {MAX_SPECIAL_TOKENS:,} special tokens of up to {MAX_SPECIAL_CHARS} "
            f"characters each, this one {len(specials):,}; the tokenizer data is damaged or hostile"
        )


def _checked_merges(merges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """The merges as int pairs; TokenizerError unless each is valid and all tokens fit MAX_TOKEN_BYTES.

    The byte length of every token is computed from the merges (a merged
    token is as long as its two parts) without building any token.
    """
    merges = list(merges)
    _check_counts(len(merges), ())
    out: list[tuple[int, int]] = []
    lengths = [1] * 256
    total = 256
    seen: set[tuple[int, int]] = set()
    for a, b in merges:
        a, b = int(a), int(b)
        new_id = len(lengths)
        if not (0 <= a < new_id and 0 <= b < new_id) or (a, b) in seen:
            raise TokenizerError(
                f"BPE merge {new_id - 256} ({a}, {b}) is invalid or repeated; the tokenizer data is damaged"
            )
        seen.add((a, b))
        length = lengths[a] + lengths[b]
        total += length
        if total > MAX_TOKEN_BYTES:
            raise TokenizerError(
                f"the BPE merges up to merge {new_id - 256:,} already make tokens of over {MAX_TOKEN_BYTES:,} "
                "bytes in all; the tokenizer data is damaged or hostile"
            )
        lengths.append(length)
        out.append((a, b))
    return out


class BPETokenizer(Tokenizer):
    """Byte-level BPE: 256 byte tokens, then the learned merges, then special tokens."""

    kind = "bpe"

    def __init__(
        self,
        merges: Iterable[tuple[int, int]] = (),
        special_tokens: Sequence[str] = (BOS_TOKEN,),
        pattern: str = DEFAULT_PATTERN,
    ):
        if pattern not in PATTERNS:
            raise TokenizerError(f"unknown pre-split pattern {pattern!r}; expected one of {', '.join(PATTERNS)}")
        specials = list(special_tokens)
        _check_counts(0, specials)
        merges = _checked_merges(merges)
        if BOS_TOKEN not in specials:
            specials.insert(0, BOS_TOKEN)
        if len(set(specials)) != len(specials) or not all(isinstance(s, str) and s for s in specials):
            raise TokenizerError("special tokens must be distinct, non-empty strings")
        self.pattern = pattern
        self._split = regex.compile(PATTERNS[pattern])
        self.merges: list[tuple[int, int]] = merges
        self._ranks: dict[tuple[int, int], int] = {pair: 256 + k for k, pair in enumerate(merges)}
        vocab = [bytes([b]) for b in range(256)]
        for a, b in merges:
            vocab.append(vocab[a] + vocab[b])
        self.special_tokens = specials
        first_special = len(vocab)
        self.special_ids = {s: first_special + k for k, s in enumerate(specials)}
        self.bos_id = self.special_ids[BOS_TOKEN]
        # Special tokens decode to no bytes: they are boundaries, not text.
        self._vocab: list[bytes] = vocab + [b""] * len(specials)
        # Longest first, so that a special token that extends another one wins.
        alternatives = "|".join(regex.escape(s) for s in sorted(specials, key=len, reverse=True))
        self._special_split = regex.compile(f"({alternatives})")
        self._cache: dict[str, tuple[int, ...]] = {}

    # ------------------------------------------------------------------ training
    @classmethod
    def train(
        cls,
        text: str,
        vocab_size: int = DEFAULT_VOCAB_SIZE,
        progress: Callable[[int, int], None] | None = None,
        special_tokens: Sequence[str] = (BOS_TOKEN,),
        pattern: str = DEFAULT_PATTERN,
    ) -> "BPETokenizer":
        """Learn ``vocab_size - 256 - len(special_tokens)`` merges from ``text``.

        ``progress(done, total)`` is called as merges are learned (about a
        hundred times). The vocabulary comes out smaller than asked for only
        when the text runs out of pairs to merge.
        """
        specials = list(special_tokens)
        if BOS_TOKEN not in specials:
            specials.insert(0, BOS_TOKEN)
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
            raise TokenizerError(f"the BPE vocabulary size must be a whole number, got {vocab_size!r}")
        smallest = 257 + len(specials)
        if vocab_size < smallest:
            raise TokenizerError(
                f"a BPE vocabulary of {vocab_size} is too small: it needs 256 bytes, {len(specials)} special "
                f"token(s) and at least one merge, so choose {smallest} or more"
            )
        if not isinstance(text, str) or not text:
            raise TokenizerError("cannot train BPE on empty text; load a corpus first")
        if pattern not in PATTERNS:
            raise TokenizerError(f"unknown pre-split pattern {pattern!r}; expected one of {', '.join(PATTERNS)}")
        _check_encodable(text)
        # Each distinct chunk is counted once, with its frequency: tiny
        # Shakespeare has about 260k chunks but only some 15k distinct ones.
        split = regex.compile(PATTERNS[pattern])
        chunk_counts: Counter[str] = Counter()
        for piece in text_pieces(text):
            chunk_counts.update(split.findall(piece))
        words, freqs = [], []
        for chunk, f in chunk_counts.items():
            b = chunk.encode("utf-8")
            if len(b) > 1:  # single bytes hold no pair
                words.append(b)
                freqs.append(f)
        n_merges = vocab_size - 256 - len(specials)
        merges = learn_merges(words, freqs, n_merges, progress=progress)
        if progress is not None and len(merges) < n_merges:
            progress(n_merges, n_merges)  # ran out of pairs: report completion anyway
        return cls(merges, special_tokens=specials, pattern=pattern)

    # ------------------------------------------------------------------ encoding
    @property
    def vocab_size(self) -> int:
        return len(self._vocab)

    def _encode_chunk(self, chunk: str) -> tuple[int, ...]:
        """Ids of one pre-split chunk: apply the learned merges in rank order.

        The result is that of applying each merge over the chunk in turn
        (``merge_pair`` for merge 0, 1, 2, ...), computed in O(n log n): a
        linked list holds the tokens and a heap holds (rank, position) of
        every neighbour pair that is a merge. Ranks pop in increasing order (a
        merge only creates pairs of higher rank, as they hold the new token)
        and equal ranks left to right. Rescanning the chunk after each merge
        instead is O(n^2): slower even on words, and hours for a megabyte
        without a space.
        """
        ranks = self._ranks
        tok = list(chunk.encode("utf-8"))
        n = len(tok)
        if n < 2:
            return tuple(tok)
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        prv = list(range(-1, n - 1))
        heap = [(r, i) for i in range(n - 1) if (r := ranks.get((tok[i], tok[i + 1]))) is not None]
        heapq.heapify(heap)
        while heap:
            r, i = heapq.heappop(heap)
            j = nxt[i]
            if tok[i] < 0 or j < 0 or ranks.get((tok[i], tok[j])) != r:
                continue  # stale: position i was absorbed, or its pair has changed
            tok[i] = r  # a merge's rank is the id of the token it makes
            tok[j] = -1  # absorbed into i
            k = nxt[i] = nxt[j]
            if k >= 0:
                prv[k] = i
                rk = ranks.get((r, tok[k]))
                if rk is not None:
                    heapq.heappush(heap, (rk, i))
            p = prv[i]
            if p >= 0:
                rp = ranks.get((tok[p], r))
                if rp is not None:
                    heapq.heappush(heap, (rp, p))
        return tuple(t for t in tok if t >= 0)

    def encode_ordinary(self, text: str) -> list[int]:
        """Ids of ``text`` with special tokens treated as plain text."""
        cache = self._cache
        out: list[int] = []
        extend = out.extend
        try:
            for chunk in self._split.findall(text):
                ids = cache.get(chunk)
                if ids is None:
                    ids = self._encode_chunk(chunk)
                    if len(cache) >= _CACHE_LIMIT:
                        cache.clear()
                    cache[chunk] = ids
                extend(ids)
        except UnicodeEncodeError:
            _check_encodable(text)
            raise
        return out

    def encode(self, text: str, allowed_special: str | Collection[str] = ()) -> list[int]:
        """Ids of ``text``. Special tokens in the text stay plain text unless allowed.

        ``allowed_special`` is ``"all"`` or a collection of special-token
        strings that, when they occur in the text, become their single id.
        """
        if not isinstance(text, str):
            raise TokenizerError(f"can only encode text (str), got {type(text).__name__}")
        if allowed_special == "all":
            allowed = set(self.special_tokens)
        else:
            allowed = set(allowed_special)
            unknown = allowed - set(self.special_tokens)
            if unknown:
                raise TokenizerError(
                    f"unknown special token(s) {sorted(unknown)}; this tokenizer has {self.special_tokens}"
                )
        if not allowed:
            return self.encode_ordinary(text)
        out: list[int] = []
        # With a capturing group, split alternates plain text and special tokens.
        for k, part in enumerate(self._special_split.split(text)):
            if k % 2 == 1 and part in allowed:
                out.append(self.special_ids[part])
            elif part:
                out.extend(self.encode_ordinary(part))
        return out

    # ------------------------------------------------------------------ decoding
    def _as_list(self, ids: Iterable[int]) -> list[int]:
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        if ids and (min(ids) < 0 or max(ids) >= len(self._vocab)):
            self._check_ids(ids)  # raises, naming the bad ids
        return ids

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The raw bytes of ``ids`` (special tokens give none); for streaming text."""
        vocab = self._vocab
        return b"".join([vocab[i] for i in self._as_list(ids)])

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; bytes that are not valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # ------------------------------------------------------------------ inspection
    def token_bytes(self, i: int) -> bytes:
        """The bytes of token i (special tokens give b'')."""
        self._check_ids([i])
        return self._vocab[int(i)]

    def token_str(self, i: int) -> str:
        """Printable form of token i: whitespace made visible, stray bytes as ``\\xe2``."""
        self._check_ids([i])
        i = int(i)
        if i >= len(self._vocab) - len(self.special_tokens):
            return self.special_tokens[i - (len(self._vocab) - len(self.special_tokens))]
        # backslashreplace shows each byte that is not part of a whole
        # character as \xNN; printable then escapes controls and whitespace.
        return printable(self._vocab[i].decode("utf-8", errors="backslashreplace"))

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "merges": len(self.merges), "pattern": self.pattern}

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "version": FORMAT_VERSION,
            "pattern": self.pattern,
            "merges": [[a, b] for a, b in self.merges],
            "special_tokens": list(self.special_tokens),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BPETokenizer":
        damaged = "; the tokenizer data is damaged or from a newer version of lmcore"
        if d.get("version", FORMAT_VERSION) != FORMAT_VERSION:
            raise TokenizerError(f"BPE tokenizer data has version {d.get('version')!r}, expected {FORMAT_VERSION}")
        merges, specials = d.get("merges"), d.get("special_tokens", [BOS_TOKEN])
        _check_counts(len(merges) if isinstance(merges, list) else 0, specials if isinstance(specials, list) else ())
        if not isinstance(merges, list) or not all(
            isinstance(m, (list, tuple))
            and len(m) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) for x in m)
            for m in merges
        ):
            raise TokenizerError("BPE tokenizer data has no list of [int, int] merges" + damaged)
        if not isinstance(specials, list) or not all(isinstance(s, str) for s in specials):
            raise TokenizerError("BPE tokenizer data has a bad special_tokens list" + damaged)
        pattern = d.get("pattern", DEFAULT_PATTERN)
        if not isinstance(pattern, str):
            raise TokenizerError("BPE tokenizer data has a bad pattern name" + damaged)
        return cls([(a, b) for a, b in merges], special_tokens=specials, pattern=pattern)
