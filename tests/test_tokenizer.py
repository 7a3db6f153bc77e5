import json

import pytest
import regex
import torch

from florence2.errors import CheckpointError, TaskError
from florence2.tokenizer import FLORENCE2_SPECIAL_TOKENS, Florence2Tokenizer, train_bpe_tokenizer

CORPUS = [
    "A green car parked in front of a yellow building.",
    "The image shows a stop sign sitting on the side of a street in Chinatown, New York City.",
    "What is the text in the image? What does the image describe?",
    "Locate the objects with category name in the image. Locate the phrases in the caption:",
    "Describe in detail what is shown in the image, with regions. It's the cars' wheels.",
    "héllo wörld, naïve café; 中文中新 テキスト; emoji 🚗🚦 and tabs\tand\nnew lines 12345.",
] * 4

STRINGS = [
    "",
    " ",
    "a green car",
    " leading space and  double  spaces ",
    "What is the text in the image?",
    "It's the cars' wheels, isn't it? I'm sure they've gone.",
    "Ünïcödé café 中文中新 テキスト 🚗 unseen: ĳ ŀ ǆ 𝔘 ☃",
    "tabs\tand\nnew\r\nlines",
    "car<loc_53><loc_334><loc_933><loc_775>door handle<loc_425><loc_504><loc_474><loc_516>",
    "</s><s>a car<poly><loc_1><loc_2><sep><loc_3><loc_4></poly><and>bus</s>",
    "Locate Mercedes-Benz<and>M2<and>Audi in the image.",
    "What is the region <loc_0><loc_999><loc_12><loc_1>?",
    "<loc_1000> is not a token, <loc_12 neither, <od>ok</od> <region_to_desciption>",
    "<s>x<pad>y<unk>z</s>",
]


@pytest.fixture(scope="module")
def trained() -> Florence2Tokenizer:
    return train_bpe_tokenizer(CORPUS, vocab_size=400)


@pytest.fixture(scope="module")
def bpe_files(tmp_path_factory, trained) -> str:
    """vocab.json + merges.txt only, as a BART checkpoint ships them."""
    folder = tmp_path_factory.mktemp("bpe_files")
    trained._tokenizer.model.save(str(folder))
    return str(folder)


# ----------------------------------------------------------------------------- a slow reference


def _bytes_to_unicode() -> dict[int, str]:
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


_GPT2_SPLIT = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


class SlowBartBPE:
    """The GPT-2/BART byte-level BPE in plain Python (what transformers' slow BartTokenizer did):
    split out special tokens, regex pre-split, map bytes to symbols, merge the best-ranked pair."""

    def __init__(self, folder: str, special_tokens: list[str]):
        with open(f"{folder}/vocab.json", encoding="utf-8") as f:
            self.vocab = json.load(f)
        with open(f"{folder}/merges.txt", encoding="utf-8") as f:
            lines = [line.rstrip("\n") for line in f if line.strip() and not line.startswith("#version")]
        self.ranks = {tuple(line.split(" ")): i for i, line in enumerate(lines)}
        self.byte_symbols = _bytes_to_unicode()
        self.special = {t: i for i, t in enumerate(special_tokens, start=len(self.vocab))}
        self.special.update({t: self.vocab[t] for t in ("<s>", "<pad>", "</s>", "<unk>", "<mask>")})
        self.splitter = regex.compile("(" + "|".join(map(regex.escape, sorted(self.special, key=len)[::-1])) + ")")

    def _bpe(self, word: str) -> list[str]:
        parts = list(word)
        while len(parts) > 1:
            ranked = [(self.ranks.get(pair, float("inf")), i) for i, pair in enumerate(zip(parts, parts[1:]))]
            rank, i = min(ranked)
            if rank == float("inf"):
                break
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        return parts

    def encode(self, text: str) -> list[int]:
        ids = [self.special["<s>"]]
        for chunk in self.splitter.split(text):
            if chunk in self.special:
                ids.append(self.special[chunk])
                continue
            for word in _GPT2_SPLIT.findall(chunk):
                symbols = "".join(self.byte_symbols[b] for b in word.encode("utf-8"))
                ids += [self.vocab[p] for p in self._bpe(symbols)]
        return ids + [self.special["</s>"]]


# ----------------------------------------------------------------------------- tests


def test_trained_layout(trained):
    assert [trained.id_to_token(i) for i in range(4)] == ["<s>", "<pad>", "</s>", "<unk>"]
    base = trained.token_to_id("<mask>") + 1
    assert base <= 400
    assert trained.vocab_size == len(trained) == base + 1024
    assert trained.token_to_id("<od>") == base
    assert all(trained.loc_token_id(k) == base + 4 + k for k in range(1000))
    assert trained.token_to_id("<and>") == base + 1023
    assert (trained.bos_token_id, trained.pad_token_id, trained.eos_token_id) == (0, 1, 2)


def test_special_token_order():
    assert len(FLORENCE2_SPECIAL_TOKENS) == 1024 == len(set(FLORENCE2_SPECIAL_TOKENS))
    assert FLORENCE2_SPECIAL_TOKENS[:5] == ["<od>", "</od>", "<ocr>", "</ocr>", "<loc_0>"]
    assert (
        FLORENCE2_SPECIAL_TOKENS[1004:]
        == (
            "<cap> </cap> <ncap> </ncap> <dcap> </dcap> <grounding> </grounding> <seg> </seg> <sep> <region_cap> "
            "</region_cap> <region_to_desciption> </region_to_desciption> <proposal> </proposal> <poly> </poly> <and>"
        ).split()
    )


@pytest.mark.parametrize("text", STRINGS)
def test_ids_match_slow_reference(trained, bpe_files, text):
    slow = SlowBartBPE(bpe_files, FLORENCE2_SPECIAL_TOKENS)
    assert Florence2Tokenizer.from_pretrained(bpe_files).encode(text) == slow.encode(text)
    assert trained.encode(text) == slow.encode(text)


def test_ids_match_transformers_bart(trained, bpe_files):
    transformers = pytest.importorskip("transformers")
    bart = transformers.BartTokenizer.from_pretrained(bpe_files)
    bart.add_special_tokens({"additional_special_tokens": FLORENCE2_SPECIAL_TOKENS})
    ours = Florence2Tokenizer.from_pretrained(bpe_files)
    assert len(bart) == len(ours)
    for text in STRINGS:
        ids = ours.encode(text)
        assert bart(text)["input_ids"] == ids, text
        assert bart.decode(ids) == ours.decode(ids), text
        assert bart.decode(ids, skip_special_tokens=True) == ours.decode(ids, skip_special_tokens=True), text


def test_decode_keeps_special_tokens_verbatim(trained):
    ids = [2, 0] + trained.encode("car")[1:-1] + [trained.loc_token_id(53), trained.loc_token_id(334), 2, 1, 1]
    assert trained.decode(ids) == "</s><s>car<loc_53><loc_334></s><pad><pad>"
    assert trained.decode(torch.tensor(ids), skip_special_tokens=True) == "car"
    for text in STRINGS:
        assert trained.decode(trained.encode(text)) == f"<s>{text}</s>"
    assert trained.batch_decode(torch.tensor([ids, ids])) == [trained.decode(ids)] * 2


def test_batch_call_right_pads(trained):
    texts = ["a car", "What is the text in the image?", ""]
    input_ids, attention_mask = trained(texts)
    assert input_ids.dtype == attention_mask.dtype == torch.long
    lengths = [len(trained.encode(t)) for t in texts]
    assert input_ids.shape == attention_mask.shape == (3, max(lengths))
    for row, (text, length) in enumerate(zip(texts, lengths, strict=True)):
        assert input_ids[row, :length].tolist() == trained.encode(text)
        assert (input_ids[row, length:] == trained.pad_token_id).all()
        assert attention_mask[row].tolist() == [1] * length + [0] * (max(lengths) - length)
    single_ids, single_mask = trained("a car")
    assert single_ids.tolist() == [trained.encode("a car")] and single_mask.all()


def test_save_load_round_trip_and_autotokenizer(trained, tmp_path):
    trained.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {
        "tokenizer.json",
        "vocab.json",
        "merges.txt",
        "tokenizer_config.json",
        "special_tokens_map.json",
    }
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["tokenizer_class"] == "BartTokenizer"
    loaded = Florence2Tokenizer.from_pretrained(tmp_path)
    assert loaded.vocab_size == trained.vocab_size
    assert all(loaded.encode(t) == trained.encode(t) for t in STRINGS)

    (tmp_path / "tokenizer.json").unlink()  # vocab.json + merges.txt alone give the same ids
    assert all(Florence2Tokenizer.from_pretrained(tmp_path).encode(t) == trained.encode(t) for t in STRINGS)

    transformers = pytest.importorskip("transformers")
    trained.save_pretrained(tmp_path)
    auto = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert len(auto) == len(trained)
    for text in STRINGS:
        assert auto(text)["input_ids"] == trained.encode(text), text
    ids = trained.encode(STRINGS[9])
    assert auto.decode(ids, skip_special_tokens=True) == trained.decode(ids, skip_special_tokens=True)


def _synthetic_bart_folder(folder) -> None:
    """A vocab.json with BART's 50265 ids (<s> <pad> </s> <unk>, bytes, filler, <mask> last)."""
    byte_symbols = list(_bytes_to_unicode().values())
    tokens = ["<s>", "<pad>", "</s>", "<unk>", *byte_symbols, "ca", "car", "Ġcar"]
    tokens += [f"filler{i}" for i in range(50264 - len(tokens))] + ["<mask>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\nc a\nca r\nĠ car\n", encoding="utf-8")


def test_official_ids_with_bart_sized_vocab(tmp_path):
    _synthetic_bart_folder(tmp_path)
    tok = Florence2Tokenizer.from_pretrained(tmp_path)
    assert tok.token_to_id("<mask>") == 50264
    assert tok.token_to_id("<od>") == 50265
    assert tok.loc_token_id(0) == 50269 and tok.loc_token_id(998) == 51267 and tok.loc_token_id(999) == 51268
    assert tok.token_to_id("<cap>") == 51269 and tok.token_to_id("<and>") == 51288
    assert tok.vocab_size == 51289
    car = tok.token_to_id("car")
    assert tok.encode("car<loc_53>") == [0, car, 50322, 2]
    with pytest.raises(TaskError):
        tok.loc_token_id(1000)


def test_native_layout_ids_are_kept(tmp_path):
    """A tokenizer.json that already has the special tokens (plus <image>) keeps its ids, even in
    an order of its own."""
    from tokenizers import AddedToken

    _synthetic_bart_folder(tmp_path)
    tok = Florence2Tokenizer.from_pretrained(tmp_path)
    tok._tokenizer.add_special_tokens([AddedToken("<image>", special=True, normalized=False)])
    tok.save_pretrained(tmp_path)
    native = Florence2Tokenizer.from_pretrained(tmp_path)
    assert native.token_to_id("<image>") == 51289 and native.vocab_size == 51290
    assert native.loc_token_id(0) == 50269 and native.token_to_id("<and>") == 51288

    # Same tokens, <image> first: every id comes from the file.
    data = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    for entry in data["added_tokens"]:
        if entry["id"] >= 50265:
            entry["id"] = 50265 if entry["content"] == "<image>" else entry["id"] + 1
    data["added_tokens"].sort(key=lambda entry: entry["id"])  # files list them by id
    (tmp_path / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    shuffled = Florence2Tokenizer.from_pretrained(tmp_path)
    assert shuffled.token_to_id("<image>") == 50265
    assert shuffled.loc_token_id(0) == 50270 and shuffled.token_to_id("<and>") == 51289
    assert shuffled.encode("<image><loc_0>") == [0, 50265, 50270, 2]


def test_tokenizer_config(trained, tmp_path):
    trained.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config.update(model_max_length=512, clean_up_tokenization_spaces=True)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = Florence2Tokenizer.from_pretrained(tmp_path)
    assert tok.model_max_length == 512
    assert tok.decode(tok.encode("It is red .")) == "<s>It is red.</s>"
    assert trained.decode(trained.encode("It is red .")) == "<s>It is red .</s>"


@pytest.mark.parametrize(("content", "message"), [("{not json", "malformed"), ("[1, 2]", "expected a JSON object")])
def test_malformed_tokenizer_config_names_the_file(trained, tmp_path, content, message):
    trained.save_pretrained(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(content)
    with pytest.raises(CheckpointError, match=rf"{message}.*tokenizer_config\.json|tokenizer_config\.json.*{message}"):
        Florence2Tokenizer.from_pretrained(tmp_path)


def test_missing_tokenizer_files(tmp_path):
    with pytest.raises(CheckpointError, match=str(tmp_path)):
        Florence2Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "vocab.json").write_text(json.dumps({"a": 0}))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(CheckpointError, match="special tokens"):
        Florence2Tokenizer.from_pretrained(tmp_path)
