"""The Florence-2 tokenizer: BART's byte-level BPE plus 1024 Florence-2 special tokens.

Built on the ``tokenizers`` library only. With the BART vocabulary (50265 ids, ``<s>`` = 0,
``<pad>`` = 1, ``</s>`` = 2, ``<unk>`` = 3, ``<mask>`` = 50264) the special tokens take ids
50265-51288, so ``<loc_k>`` = 50269 + k and the vocabulary has 51289 entries. Folders saved by
:meth:`Florence2Tokenizer.save_pretrained` load in ``transformers.AutoTokenizer`` with the same ids.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from florence2.coords import NUM_BINS
from florence2.errors import CheckpointError, TaskError, read_checkpoint_json

FLORENCE2_SPECIAL_TOKENS: list[str] = [
    "<od>",
    "</od>",
    "<ocr>",
    "</ocr>",
    *[f"<loc_{k}>" for k in range(NUM_BINS)],
    "<cap>",
    "</cap>",
    "<ncap>",
    "</ncap>",
    "<dcap>",
    "</dcap>",
    "<grounding>",
    "</grounding>",
    "<seg>",
    "</seg>",
    "<sep>",
    "<region_cap>",
    "</region_cap>",
    "<region_to_desciption>",  # sic: the official token is misspelled
    "</region_to_desciption>",
    "<proposal>",
    "</proposal>",
    "<poly>",
    "</poly>",
    "<and>",
]

BOS_TOKEN, PAD_TOKEN, EOS_TOKEN, UNK_TOKEN, MASK_TOKEN = "<s>", "<pad>", "</s>", "<unk>", "<mask>"
_BASE_SPECIAL_TOKENS = (BOS_TOKEN, PAD_TOKEN, EOS_TOKEN, UNK_TOKEN)
DEFAULT_MODEL_MAX_LENGTH = 1024

# transformers' clean_up_tokenization, applied only when a tokenizer_config.json asks for it.
_CLEAN_UP_SPACES = (
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
)


def _byte_level_bpe(vocab: dict[str, int], merges: list[tuple[str, str]]) -> Tokenizer:
    """A BART/RoBERTa byte-level BPE without special-token handling (added by Florence2Tokenizer)."""
    tokenizer = Tokenizer(models.BPE(vocab, merges, unk_token=UNK_TOKEN))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


class Florence2Tokenizer:
    """Text <-> token ids for Florence-2.

    Wraps a ``tokenizers.Tokenizer`` holding a byte-level BPE model. On construction it registers
    ``<s> <pad> </s> <unk> <mask>`` (found by string) and :data:`FLORENCE2_SPECIAL_TOKENS` as special
    tokens, keeping the ids of those already in the vocabulary and appending the others in order,
    and makes :meth:`encode` wrap a single sequence as ``<s> ... </s>``.

    Args:
        tokenizer: the wrapped tokenizer; modified in place.
        model_max_length: the longest sequence the model takes (informational, nothing is truncated).
        clean_up_tokenization_spaces: apply transformers' space clean-up (``" ."`` -> ``"."``) in
            :meth:`decode`.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        model_max_length: int = DEFAULT_MODEL_MAX_LENGTH,
        clean_up_tokenization_spaces: bool = False,
    ) -> None:
        missing = [t for t in (*_BASE_SPECIAL_TOKENS, MASK_TOKEN) if tokenizer.token_to_id(t) is None]
        if missing:
            raise CheckpointError(f"the tokenizer vocabulary lacks the BART special tokens {missing}")
        tokenizer.no_padding()
        tokenizer.no_truncation()
        tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in _BASE_SPECIAL_TOKENS])
        # BART's <mask> swallows the space before it.
        tokenizer.add_special_tokens([AddedToken(MASK_TOKEN, lstrip=True, special=True, normalized=False)])
        tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in FLORENCE2_SPECIAL_TOKENS])
        tokenizer.post_processor = processors.RobertaProcessing(
            (EOS_TOKEN, tokenizer.token_to_id(EOS_TOKEN)),
            (BOS_TOKEN, tokenizer.token_to_id(BOS_TOKEN)),
            trim_offsets=True,
            add_prefix_space=False,
        )
        self._tokenizer = tokenizer
        self.model_max_length = model_max_length
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> Florence2Tokenizer:
        """Load ``tokenizer.json``, or else ``vocab.json`` + ``merges.txt``, from a folder.

        ``tokenizer_config.json``, when present, supplies ``model_max_length`` and
        ``clean_up_tokenization_spaces``.

        Raises:
            CheckpointError: the folder holds no tokenizer files, or they lack BART's special tokens.
        """
        folder = Path(folder)
        tokenizer_file, vocab_file, merges_file = (folder / n for n in ("tokenizer.json", "vocab.json", "merges.txt"))
        if not tokenizer_file.is_file() and not (vocab_file.is_file() and merges_file.is_file()):
            raise CheckpointError(f"no tokenizer in {folder}: expected tokenizer.json, or vocab.json and merges.txt")
        try:
            if tokenizer_file.is_file():
                tokenizer = Tokenizer.from_file(str(tokenizer_file))
            else:
                tokenizer = _byte_level_bpe(*models.BPE.read_file(str(vocab_file), str(merges_file)))
        except Exception as e:  # tokenizers raises a bare Exception on malformed files
            raise CheckpointError(f"cannot read the tokenizer files in {folder}: {e}") from e
        config = {}
        if (folder / "tokenizer_config.json").is_file():
            config = read_checkpoint_json(folder / "tokenizer_config.json")
        max_length = config.get("model_max_length", DEFAULT_MODEL_MAX_LENGTH)
        if not isinstance(max_length, int) or max_length > 10**9:  # transformers writes 1e30 for "none"
            max_length = DEFAULT_MODEL_MAX_LENGTH
        return cls(tokenizer, max_length, bool(config.get("clean_up_tokenization_spaces", False)))

    def save_pretrained(self, folder: str | Path) -> None:
        """Write ``tokenizer.json``, ``vocab.json``, ``merges.txt``, ``tokenizer_config.json`` and
        ``special_tokens_map.json`` (BART layout, readable by ``transformers.AutoTokenizer``)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self._tokenizer.save(str(folder / "tokenizer.json"))
        self._tokenizer.model.save(str(folder))  # vocab.json + merges.txt
        special = {
            "bos_token": BOS_TOKEN,
            "eos_token": EOS_TOKEN,
            "sep_token": EOS_TOKEN,
            "cls_token": BOS_TOKEN,
            "unk_token": UNK_TOKEN,
            "pad_token": PAD_TOKEN,
            "mask_token": MASK_TOKEN,
        }
        config = {
            "tokenizer_class": "BartTokenizer",
            **special,
            "add_prefix_space": False,
            "errors": "replace",
            "trim_offsets": True,
            "model_max_length": self.model_max_length,
            "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
        }
        special_map = {**special, "additional_special_tokens": FLORENCE2_SPECIAL_TOKENS}
        for name, content in (("tokenizer_config.json", config), ("special_tokens_map.json", special_map)):
            (folder / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, wrapped as ``<s> ... </s>``; special tokens in the text (``<loc_12>``,
        ``<poly>``) become their single ids."""
        return self._tokenizer.encode(text).ids

    def __call__(self, texts: str | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode a batch, right-padded with ``<pad>``.

        Returns:
            ``input_ids`` and ``attention_mask``, both int64 ``(B, T)`` with T the longest sequence;
            the mask is 1 on tokens, 0 on padding.
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        encodings = [e.ids for e in self._tokenizer.encode_batch(texts)]
        length = max((len(ids) for ids in encodings), default=0)
        input_ids = torch.full((len(encodings), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(encodings), length), dtype=torch.long)
        for row, ids in enumerate(encodings):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, : len(ids)] = 1
        return input_ids, attention_mask

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = False) -> str:
        """Text of a 1-D id sequence. Special tokens are kept verbatim with no added spaces
        (``"</s><s>car<loc_53><loc_334>...</s>"``) unless ``skip_special_tokens``."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        text = self._tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)
        if self.clean_up_tokenization_spaces:
            for before, after in _CLEAN_UP_SPACES:
                text = text.replace(before, after)
        return text

    def token_offsets(self, ids: Sequence[int] | torch.Tensor) -> list[tuple[int, int]]:
        """``(start, end)`` character offsets of each token in ``decode(ids)`` (special tokens kept).

        Tokens are decoded one by one; where that does not add up to the whole text (a character
        whose UTF-8 bytes span several tokens, or the space clean-up), each token ends where the
        decoded prefix up to it ends (never before the previous token), so a split character goes to
        one of the tokens holding its bytes and the offsets still tile the text."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        ids = list(ids)
        whole = self.decode(ids)
        pieces = [self.decode([i]) for i in ids]
        lengths = [len(piece) for piece in pieces]
        if "".join(pieces) != whole:
            ends = [len(self.decode(ids[:end])) for end in range(1, len(ids) + 1)]
            lengths = [b - a for a, b in zip([0, *ends[:-1]], ends)]
        offsets, end = [], 0
        for n in lengths:
            start, end = end, min(len(whole), max(end, end + n))
            offsets.append((start, end))
        return offsets

    def batch_decode(
        self, sequences: Iterable[Sequence[int]] | torch.Tensor, skip_special_tokens: bool = False
    ) -> list[str]:
        """:meth:`decode` for each row of ``(B, T)`` ids."""
        return [self.decode(ids, skip_special_tokens) for ids in sequences]

    def token_to_id(self, token: str) -> int | None:
        """Id of a token string (``"Ġcar"``, ``"<loc_3>"``), None when it is not in the vocabulary."""
        return self._tokenizer.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        """Token string of an id, None when out of range."""
        return self._tokenizer.id_to_token(token_id)

    def add_words(self, words: Sequence[str]) -> dict[str, int]:
        """Give each word a token of its own, with the next free id, and return ``{word: id}`` for
        those added (a word that already is one token is left as it is). The new token is matched as
        a whole word wherever a text holds it (``"arrow<loc_1>"``, ``"an arrow"``, not ``"arrows"``),
        and is saved in ``tokenizer.json``; the model needs an embedding row for each new id."""
        added = {}
        for word in dict.fromkeys(words):
            if not word or word != word.strip() or "<" in word or ">" in word:
                raise TaskError(f"a word to add must be non-empty text without spaces at its ends or <>: {word!r}")
            if len(self.encode(word)) == 3:  # <s> word </s>
                continue
            self._tokenizer.add_tokens([AddedToken(word, single_word=True, normalized=False)])
            added[word] = self._tokenizer.token_to_id(word)
        return added

    def loc_token_id(self, k: int) -> int:
        """Id of ``<loc_k>``, 0 <= k < 1000 (50269 + k with the BART vocabulary)."""
        if not 0 <= k < NUM_BINS:
            raise TaskError(f"location bins go from 0 to {NUM_BINS - 1}, got {k}")
        return self._tokenizer.token_to_id(f"<loc_{k}>")

    @property
    def bos_token_id(self) -> int:
        return self._tokenizer.token_to_id(BOS_TOKEN)

    @property
    def eos_token_id(self) -> int:
        return self._tokenizer.token_to_id(EOS_TOKEN)

    @property
    def pad_token_id(self) -> int:
        return self._tokenizer.token_to_id(PAD_TOKEN)

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included (51289 for Florence-2, 51290 with a native ``<image>``)."""
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int) -> Florence2Tokenizer:
    """Train a byte-level BPE in BART's layout on a corpus (for new small models and tests).

    The base vocabulary has ``<s> <pad> </s> <unk>`` at ids 0-3, the 256 byte symbols and the learned
    merges, and ``<mask>`` as its last id; the 1024 Florence-2 special tokens follow, so
    ``<loc_k>`` = base size + 4 + k.

    Args:
        texts: training sentences.
        vocab_size: size of the base vocabulary, ``<mask>`` included (at least 261; a small corpus
            may yield fewer merges than asked for).
    """
    if vocab_size < len(_BASE_SPECIAL_TOKENS) + 257:
        raise TaskError(f"vocab_size must be at least 261 (4 special tokens, 256 bytes, <mask>), got {vocab_size}")
    tokenizer = _byte_level_bpe({}, [])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 1,
        special_tokens=list(_BASE_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    model = json.loads(tokenizer.to_str())["model"]
    vocab = dict(model["vocab"])
    vocab[MASK_TOKEN] = len(vocab)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in model["merges"]]
    return Florence2Tokenizer(_byte_level_bpe(vocab, merges))
