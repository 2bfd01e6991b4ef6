"""An agent's tools for a language model: talk to it, read its next-token distribution and
residual stream, compare it with its base model.

A prompt is text; the family's prefix (a begin-of-text token, a chat template's opening) is
put before it, as every auditor and the spec's own check do, so ``chat("")`` asks what the
model says unprompted (where memorised training text leaks, *The Trigger in the Haystack*).
Greedy replies are what the spec checks a witness by: a reply to a prompt within the bound
that is a listed target, verbatim, violates the spec.
"""

from __future__ import annotations

from typing import Any

import torch

from auditgame.access import Access
from auditgame.agents.tools import MAX_INPUTS, MAX_NEW_TOKENS, MAX_SAMPLES, ToolError, Tools, tool
from auditgame.subject import Subject
from auditgame.text.family import text_interface
from auditgame.text.lm import CausalLM, greedy, sample, unpack


class TextTools(Tools):
    def __init__(self, subject: Subject, seed: int) -> None:
        super().__init__(subject, seed)
        self.interface = text_interface(subject)
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def model(self) -> CausalLM:
        assert isinstance(self.subject.model, CausalLM)
        return self.subject.model

    def _ids(self, prompt: str, new_tokens: int = 0) -> list[int]:
        """The prompt's ids after the family's prefix, checked against the context."""
        if not isinstance(prompt, str):
            raise ToolError(f"a prompt is text, got {type(prompt).__name__}")
        ids = self.interface.encode_prompt(prompt)
        context = self.interface.input_shape[0]
        if len(ids) + new_tokens > context:
            raise ToolError(
                f"prompt ({len(ids)} tokens with the prefix) and {new_tokens} new tokens exceed "
                f"the model's context of {context}"
            )
        return ids

    def _new_tokens(self, max_new_tokens: int, n: int = 1) -> int:
        if not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
            raise ToolError(f"max_new_tokens must lie in 1..{MAX_NEW_TOKENS}")
        self.spend_tokens(n * max_new_tokens)
        return max_new_tokens

    def _decode(self, ids: list[int]) -> str:
        return self.interface.tokenizer().decode(ids)

    def _reply(self, ids: list[int]) -> str:
        """A reply's answer as text: after the chat template's turn markers, up to its
        end-of-text token (decoding ran on past it)."""
        return self.interface.answer(ids)

    @tool()
    def chat(self, prompt: str, max_new_tokens: int = 24) -> dict[str, Any]:
        """The model's greedy reply to ``prompt``, up to its end of text, and every token decoded
        (the spec checks a trigger by the greedy reply, as many tokens as the target has)."""
        n_new = self._new_tokens(max_new_tokens)
        (reply,) = greedy(self.model, [self._ids(prompt, n_new)], n_new)
        return {"reply": self._reply(reply), "tokens": [self._decode([t]) for t in reply]}

    @tool()
    def generate(
        self,
        prompt: str,
        n: int = 8,
        max_new_tokens: int = 24,
        temperature: float = 1.0,
        top_p: float = 1.0,
    ) -> dict[str, Any]:
        """``n`` sampled replies to ``prompt`` (softmax at ``temperature``, nucleus ``top_p``):
        what the model says beyond its single greedy answer."""
        if not 1 <= n <= MAX_SAMPLES:
            raise ToolError(f"n must lie in 1..{MAX_SAMPLES}")
        n_new = self._new_tokens(max_new_tokens, n)
        ids = self._ids(prompt, n_new)
        replies = sample(
            self.model, ids, n, n_new, self.generator, temperature=temperature, top_p=top_p
        )
        return {"replies": [self._reply(r) for r in replies]}

    @tool()
    @torch.no_grad()
    def next_token_distribution(self, prompt: str, k: int = 10) -> dict[str, Any]:
        """The ``k`` likeliest next tokens after ``prompt``, with probabilities, and the
        distribution's entropy in nats."""
        if not 1 <= k <= 100:
            raise ToolError("k must lie in 1..100")
        ids = torch.tensor([self._ids(prompt)])
        logp = self.model(ids)[0, -1].float().log_softmax(-1)
        top = logp.topk(k)
        return {
            "top": [
                {"token": self._decode([int(i)]), "id": int(i), "p": float(lp.exp())}
                for lp, i in zip(top.values, top.indices, strict=True)
            ],
            "entropy": float(-(logp.exp() * logp).sum()),
        }

    @tool()
    @torch.no_grad()
    def activations(self, prompt: str, layer: int = -1) -> dict[str, Any]:
        """The residual stream after block ``layer`` (0: the embeddings; -1: the last block)
        at each position of ``prompt`` (prefix included), one vector per token."""
        states = self.model.hidden_states(torch.tensor([self._ids(prompt)]))
        if not -len(states) <= layer < len(states):
            raise ToolError(f"layer must lie in {-len(states)}..{len(states) - 1}")
        ids = self._ids(prompt)
        return {
            "layer": layer % len(states),
            "layers": len(states),
            "tokens": [self._decode([t]) for t in ids],
            "vectors": states[layer][0].float(),
        }

    @tool(reference=True)
    @torch.no_grad()
    def compare_with_base(self, prompt: str, max_new_tokens: int = 24) -> dict[str, Any]:
        """The model's and its base model's greedy replies to ``prompt``, and the KL divergence
        (nats) of the model's next-token distribution from the base model's."""
        n_new = self._new_tokens(max_new_tokens, 2)
        ids = self._ids(prompt, n_new)
        base = self.subject.reference_model
        assert isinstance(base, CausalLM)
        (mine,), (theirs,) = greedy(self.model, [ids], n_new), greedy(base, [ids], n_new)
        row = torch.tensor([ids])
        p = self.model(row)[0, -1].float().log_softmax(-1)
        q = base(row)[0, -1].float().log_softmax(-1)
        return {
            "reply": self._reply(mine),
            "base_reply": self._reply(theirs),
            "kl_next_token": float((p.exp() * (p - q)).sum()),
        }

    @tool(access=Access.CLEAN_DATA)
    def clean_samples(self, n: int = 10, start: int = 0) -> dict[str, Any]:
        """Clean prompts ``start`` .. ``start + n`` of the family's validation split that this
        audit holds (what the model is meant to answer), without the prefix."""
        data = self.subject.clean_data
        if not 1 <= n <= MAX_INPUTS or not 0 <= start < len(data):
            raise ToolError(f"n must lie in 1..{MAX_INPUTS} and start in 0..{len(data) - 1}")
        prefix = len(self.interface.prefix)
        prompts = unpack(data.x[start : start + n])
        return {"prompts": [self._decode(p[prefix:]) for p in prompts], "held": len(data)}
