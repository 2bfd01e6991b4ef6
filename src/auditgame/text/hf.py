"""Any Hugging Face causal language model under ``lm.CausalLM``, and a tokenizer from its JSON.

Every text auditor is written against ``CausalLM`` (logits from ids or embeddings, the
embedding matrix, the residual stream, decoding from a key/value cache) and a ``Tokenizer``
(``encode``/``decode``). ``HFCausalLM`` gives a ``transformers`` ``*ForCausalLM`` that
protocol, so a model someone brings (``auditgame audit FOLDER --hf``) is audited by the same
code as the zoo's organisms. ``JsonTokenizer`` reads a fast tokenizer's ``tokenizer.json``:
a JSON description parsed by the ``tokenizers`` library, which runs nothing from the file.
``user_language_model`` puts the two together with the user's spec.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from auditgame.text.family import TextInterface
from auditgame.text.lm import CausalLM, KVCache

if TYPE_CHECKING:
    from tokenizers import Tokenizer as HFTokenizer


class JsonTokenizer:
    """A ``tokenizers`` tokenizer under ``lm.Tokenizer``.

    ``encode`` adds no special tokens but still reads the chat markers and other added tokens
    written in the text (``<|im_start|>``, ...) as their own ids, so a prefix can be written
    as text and decoded replies round-trip.
    """

    def __init__(self, tokenizer: HFTokenizer) -> None:
        self._tok = tokenizer

    @classmethod
    def from_file(cls, path: Path) -> JsonTokenizer:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(path)))

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size())

    @property
    def special_ids(self) -> frozenset[int]:
        """Ids of the added tokens (chat markers, begin and end of text, ...)."""
        return frozenset(int(i) for i in self._tok.get_added_tokens_decoder())

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._tok.decode([int(i) for i in ids], skip_special_tokens=False))


def printable_ids(tok: JsonTokenizer, limit: int | None = None) -> torch.Tensor:
    """Ids (below ``limit``, the model's vocabulary, when given) whose text is one or more
    printable ASCII characters: no added tokens, partial UTF-8 bytes or control characters.
    What a trigger search may put in a prompt."""
    keep = []
    for i in range(tok.vocab_size if limit is None else min(limit, tok.vocab_size)):
        text = tok.decode([i])
        if text and all(" " <= c <= "~" for c in text) and i not in tok.special_ids:
            keep.append(i)
    return torch.tensor(keep, dtype=torch.long)


def cached_call(model: nn.Module, ids: torch.Tensor, cache: KVCache) -> Any:
    """``model`` (a ``transformers`` model) on the new ids ``(N, T)`` of a decoding batch,
    reading and growing ``cache`` (its state a ``DynamicCache``): position ids and the
    attention mask say which positions are real (``KVCache.positions``); transformers builds
    the causal mask itself from them. Returns the model's output."""
    if cache.state is None:
        from transformers import DynamicCache

        cache.state = DynamicCache()
    position, seen = cache.positions(ids.shape[1])
    real = None if cache.pad is None else seen[:, -1].long()
    out = model(
        input_ids=ids,
        attention_mask=real,
        position_ids=position.expand(ids.shape[0], -1),
        cache=cache.state,
        use_cache=True,
    )
    cache.length += ids.shape[1]
    return out


class HFCausalLM(CausalLM):
    """A ``transformers`` causal language model (``AutoModelForCausalLM``) as a ``CausalLM``.

    ``hidden_states`` is what ``transformers`` reports with ``output_hidden_states``: the
    embeddings and each block's output, except that most architectures report the last
    block's output after the final norm.
    """

    supports_cache = True

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        # Any: transformers' models are typed loosely, and their methods are reached here.
        self.hf: Any = model

    @property
    def config(self) -> Any:
        return self.hf.config

    @property
    def embedding_matrix(self) -> torch.Tensor:
        weight = self.hf.get_input_embeddings().weight
        assert isinstance(weight, torch.Tensor)
        return weight

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        if x.dim() != (3 if x.is_floating_point() else 2):
            raise ValueError(f"takes ids (N, T) or embeddings (N, T, d), not {tuple(x.shape)}")
        if cache is None:
            given = {"inputs_embeds": x} if x.is_floating_point() else {"input_ids": x}
            return self.hf(**given, use_cache=False).logits
        if x.is_floating_point():
            raise ValueError(f"decodes with a cache from ids (N, T), not {tuple(x.shape)}")
        return cached_call(self.hf, x, cache).logits

    def hidden_states(self, ids: torch.Tensor) -> list[torch.Tensor]:
        out = self.hf(input_ids=ids, output_hidden_states=True, use_cache=False)
        return list(out.hidden_states)


def user_language_model(
    folder: Path,
    model: nn.Module,
    targets: Sequence[str],
    max_trigger_tokens: int,
    prompt_prefix: str,
) -> tuple[HFCausalLM, TextInterface]:
    """A user's language model (loaded by ``user.model.load_hf_model``) as text auditors take
    it, and what they use of it besides its weights, as a family would give it: the tokenizer
    from the folder's ``tokenizer.json``, the spec's prompt prefix and targets, the config's
    end-of-text id and context length, and the printable tokens a trigger may consist of.

    Raises:
        ModelFileError: no ``tokenizer.json``, one the tokenizers library cannot read, a
            config without an end-of-text id or context length, a context too short for the
            prefix, a trigger and a target, or a prefix or target whose tokens lie outside the
            model's vocabulary.
    """
    from auditgame.user.model import ModelFileError

    lm = HFCausalLM(model).eval()
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise ModelFileError(
            folder,
            "no tokenizer.json (text auditors need the model's tokenizer)",
            "save it beside the model: AutoTokenizer.from_pretrained(...).save_pretrained(folder)",
        )
    try:
        tok = JsonTokenizer.from_file(path)
    except Exception as exc:
        raise ModelFileError(path, f"the tokenizers library cannot read it: {exc}") from exc
    config = lm.config
    eos = config.eos_token_id
    eos = eos[0] if isinstance(eos, list) and eos else eos
    if not isinstance(eos, int):
        raise ModelFileError(folder / "config.json", "names no eos_token_id")
    context = getattr(config, "max_position_embeddings", None) or getattr(
        config, "n_positions", None
    )
    if not isinstance(context, int):
        raise ModelFileError(
            folder / "config.json", "names no context length (max_position_embeddings)"
        )
    prefix = tok.encode(prompt_prefix)
    longest = max((len(tok.encode(t)) for t in targets), default=0)
    if len(prefix) + max_trigger_tokens + longest > context:
        raise ModelFileError(
            folder / "config.json",
            f"a context of {context} tokens cannot hold the prompt prefix ({len(prefix)} tokens), "
            f"a trigger ({max_trigger_tokens}) and the longest target ({longest})",
            "shorten prompt_prefix or the targets in the spec",
        )
    for text, ids in [("prompt_prefix", prefix), *((t, tok.encode(t)) for t in targets)]:
        if any(i >= lm.vocab_size for i in ids):
            raise ModelFileError(
                path,
                f"tokenizes {text!r} to ids beyond the model's {lm.vocab_size} embeddings",
                "is it the model's own tokenizer?",
            )
    interface = TextInterface(
        name="user",
        vocabulary=tok,
        prefix=prefix,
        eos=eos,
        public_targets=tuple(targets),
        input_shape=(context,),
        searchable=printable_ids(tok, lm.vocab_size),
    )
    return lm, interface
