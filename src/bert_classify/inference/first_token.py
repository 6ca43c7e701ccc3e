"""Classification logits that skip what the head never reads: the last layer for all but the first token.

A BERT sequence classifier reads only the first ([CLS]) token of the last layer (pooler, then
classifier). Every other token's last-layer output (its attention query, attention output, and
feed-forward block) is computed and thrown away: on a 6-layer model about an eighth of the work.
`FirstTokenHead` runs the encoder up to the last layer (the model's own forward, stopped by a hook),
then the last layer for the first token only (keys and values still from every token), then the
model's own pooler and classifier. Same modules, same weights, same result to float rounding.

It applies to `BertForSequenceClassification` with absolute positions (BERT, MiniLM and other BERT-
architecture checkpoints) and is checked against the full forward pass on a padded probe batch when
built; any other model, or a mismatch, uses the full forward pass.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

log = logging.getLogger(__name__)


class _Stop(Exception):
    """Raised by the hook on the last layer: carries that layer's input out of the forward pass."""

    def __init__(self, hidden_states: torch.Tensor) -> None:
        super().__init__()
        self.hidden_states = hidden_states


class FirstTokenHead:
    """`logits(input_ids, attention_mask)` for a BERT classifier, the last layer for the first token only."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.bert = model.bert
        self.last = model.bert.encoder.layer[-1]

    @classmethod
    def build(cls, model: Any) -> FirstTokenHead | None:
        """The fast head for `model` if its architecture allows and a probe agrees; else None."""
        if not _eligible(model):
            return None
        head = cls(model)
        try:
            if not head._agrees_with_full_forward():
                log.warning("first-token head disagrees with the full forward pass; using the full pass")
                return None
        except Exception as error:  # an architecture variant we do not know: the full pass is always right
            log.debug("first-token head unusable (%s); using the full pass", error)
            return None
        return head

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self._last_layer_input(input_ids, attention_mask)
        first = self._last_layer_first_token(hidden, attention_mask)
        return self.model.classifier(self.model.dropout(self.bert.pooler(first)))

    def _last_layer_input(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        def stop(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            raise _Stop(args[0] if args else kwargs["hidden_states"])

        handle = self.last.register_forward_pre_hook(stop, with_kwargs=True)
        try:
            self.model(input_ids=input_ids, attention_mask=attention_mask)
        except _Stop as stopped:
            return stopped.hidden_states
        finally:
            handle.remove()
        raise RuntimeError("the last encoder layer was not called")

    def _last_layer_first_token(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        attention = self.last.attention
        projections = attention.self
        batch, length, _ = hidden.shape
        heads, size = projections.num_attention_heads, projections.attention_head_size
        first = hidden[:, :1]
        query = projections.query(first).view(batch, 1, heads, size).transpose(1, 2)
        key = projections.key(hidden).view(batch, length, heads, size).transpose(1, 2)
        value = projections.value(hidden).view(batch, length, heads, size).transpose(1, 2)
        keep = attention_mask.to(torch.bool)[:, None, None, :]  # padding keys are masked out
        context = torch.nn.functional.scaled_dot_product_attention(
            query, key, value.to(query.dtype), attn_mask=keep, scale=projections.scaling
        )
        context = context.transpose(1, 2).reshape(batch, 1, heads * size)
        attended = attention.output(context, first)
        return self.last.output(self.last.intermediate(attended), attended)

    def _agrees_with_full_forward(self) -> bool:
        config = self.model.config
        generator = torch.Generator().manual_seed(0)
        vocabulary = int(getattr(config, "vocab_size", 100))
        device = next(self.model.parameters()).device
        input_ids = torch.randint(0, vocabulary, (3, 12), generator=generator).to(device)
        attention_mask = torch.ones_like(input_ids)
        attention_mask[1, 7:] = 0
        attention_mask[2, 2:] = 0
        with torch.inference_mode():
            full = self.model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
            fast = self.logits(input_ids, attention_mask).float()
        return bool(torch.allclose(full, fast, atol=1e-4, rtol=1e-4))


def _eligible(model: Any) -> bool:
    config = getattr(model, "config", None)
    bert = getattr(model, "bert", None)
    return (
        type(model).__name__ == "BertForSequenceClassification"
        and bert is not None
        and getattr(bert, "pooler", None) is not None
        and hasattr(model, "classifier")
        and getattr(config, "position_embedding_type", "absolute") in (None, "absolute")
        and not getattr(config, "is_decoder", False)
        and not getattr(config, "add_cross_attention", False)
        and not model.training
    )
