"""Task heads on the GPT-NeoX stack: sequence classification, token classification, extractive QA.

Each is ``gpt_neox`` (a :class:`GPTNeoXModel`) plus one linear layer named as in transformers 5.24,
so checkpoints load both ways without a rename:

    GPTNeoXForSequenceClassification   score       D → num_labels, no bias, read at the last
                                                    non-padding token of each row
    GPTNeoXForTokenClassification      dropout(classifier_dropout), classifier  D → num_labels
    GPTNeoXForQuestionAnswering        qa_outputs  D → 2 (start, end logits)

Losses are transformers' (``transformers.loss.loss_utils``) rule for rule:

* sequence classification: ``config.problem_type`` is chosen at the first loss when unset —
  ``regression`` for one label, ``single_label_classification`` for integer labels, else
  ``multi_label_classification`` — and written back to the config (so a save keeps it);
  MSE / cross-entropy / BCE-with-logits, means over the batch;
* token classification: cross-entropy in fp32 over every token, labels -100 ignored;
* QA: (CE(start) + CE(end)) / 2, positions clamped to [0, T] and T ignored (a span that was
  truncated away contributes nothing).

``num_items_in_batch`` is accepted and unused, as in transformers 5.24: these losses are per-batch
means there too. The Trainer sees the heads accept loss keyword arguments (``accepts_loss_kwargs``;
transformers' heads take ``**kwargs``) and therefore, like with transformers' heads, does not divide
the loss by the gradient-accumulation steps.

A causal-LM (or bare GPTNeoXModel) checkpoint loads into a head: the backbone is loaded, the head
is newly initialised and listed in the missing keys, ``embed_out.weight`` in the unexpected keys.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .cache import KVCache
from .config import GPTNeoXConfig
from .modeling import GPTNeoXModel, GPTNeoXPreTrainedModel
from .outputs import QuestionAnsweringModelOutput, SequenceClassifierOutputWithPast, TokenClassifierOutput

logger = logging.getLogger(__name__)

__all__ = [
    "GPTNeoXForSequenceClassification",
    "GPTNeoXForTokenClassification",
    "GPTNeoXForQuestionAnswering",
    "sequence_classification_loss",
    "token_classification_loss",
    "question_answering_loss",
]

_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        logger.warning(message)


class _GPTNeoXHead(GPTNeoXPreTrainedModel):
    """What the three heads share: the backbone under ``gpt_neox`` and the Trainer's hooks."""

    # transformers' heads take **kwargs, so the Trainer passes num_items_in_batch and treats the
    # loss as already scaled for gradient accumulation; this attribute gives neox's the same path.
    accepts_loss_kwargs = True

    def __init__(self, config: GPTNeoXConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.gpt_neox = GPTNeoXModel(config)

    def _init_head(self, module: nn.Module) -> None:
        # The backbone initialised itself; only the head is new (and nothing on the meta device).
        if not any(p.is_meta for p in module.parameters()):
            self._init_weights(module)

    def _backbone(self, input_ids, attention_mask, position_ids, inputs_embeds, head_mask, past_key_values, cache,
                  use_cache, output_attentions, output_hidden_states) -> Any:
        return self.gpt_neox(
            input_ids, attention_mask=attention_mask, position_ids=position_ids, inputs_embeds=inputs_embeds,
            head_mask=head_mask, past_key_values=past_key_values, cache=cache, use_cache=use_cache,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states, return_dict=True,
        )

    def _finish(self, result: Any, return_dict: bool | None) -> Any:
        return_dict = self.config.return_dict if return_dict is None else return_dict
        return result if return_dict else result.to_tuple()


class GPTNeoXForSequenceClassification(_GPTNeoXHead):
    """GPT-NeoX with ``score`` (D → num_labels, no bias) read at each row's last real token.

    The row's last token that is not ``config.pad_token_id`` is used (right or left padding
    alike, found from ``input_ids``; the rightmost non-pad position, 0 for an all-pad row). With no
    pad token the last position is used, and a batch of more than one row is an error, as in
    transformers: rows of different lengths cannot be told apart.
    """

    loss_type = "ForSequenceClassification"  # transformers' LOSS_MAPPING key (the Trainer reads it)

    def __init__(self, config: GPTNeoXConfig) -> None:
        super().__init__(config)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        self._init_head(self.score)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        past_key_values: KVCache | Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
        labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        *,
        head_mask: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cache: KVCache | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
    ) -> SequenceClassifierOutputWithPast | tuple:
        """Logits (B, num_labels) at each row's last non-padding token; the loss with ``labels``.

        Arguments are ``GPTNeoXForCausalLM.forward``'s, except:

        Args:
            labels: (B,) class ids for single-label classification; (B,) or (B, 1) floats for
                regression (``num_labels == 1``); (B, num_labels) floats for multi-label. The
                problem type is ``config.problem_type``, chosen (and stored) at the first loss
                when unset.
            num_items_in_batch: accepted for the Trainer and unused (the loss is a batch mean,
                as in transformers).
        """
        B = _batch_size(input_ids, inputs_embeds)
        pad = self.config.pad_token_id
        if pad is None and B is not None and B != 1:
            raise ValueError(
                f"Cannot handle batch sizes > 1 if no padding token is defined (batch size {B}): set "
                "config.pad_token_id so the last real token of each row can be found"
            )
        out = self._backbone(input_ids, attention_mask, position_ids, inputs_embeds, head_mask, past_key_values,
                             cache, use_cache, output_attentions, output_hidden_states)
        logits = self.score(out.last_hidden_state)  # (B, T, num_labels)
        B = logits.shape[0]
        if pad is None:
            last: int | torch.Tensor = -1
        elif input_ids is not None:
            ids = input_ids.reshape(B, -1)  # a 1-D input is one row
            # The rightmost token that is not padding, whichever side the padding is on.
            non_pad = (ids != pad).to(logits.device, torch.int32)  # (B, T)
            positions = torch.arange(ids.shape[-1], device=logits.device, dtype=torch.int32)
            last = (positions * non_pad).argmax(-1)  # (B,)
        else:
            last = -1
            _warn_once(
                f"{type(self).__name__} will not detect padding tokens in `inputs_embeds`: the last position "
                "of each row is used, which is wrong for padded rows"
            )
        pooled = logits[torch.arange(B, device=logits.device), last]  # (B, num_labels)
        loss = None
        if labels is not None:
            loss = sequence_classification_loss(pooled, labels, self.config)
        result = SequenceClassifierOutputWithPast(
            loss=loss, logits=pooled, past_key_values=out.past_key_values,
            hidden_states=out.hidden_states, attentions=out.attentions,
        )
        return self._finish(result, return_dict)


class GPTNeoXForTokenClassification(_GPTNeoXHead):
    """GPT-NeoX with ``dropout`` (p = ``config.classifier_dropout``) and ``classifier`` (D → num_labels)."""

    loss_type = "ForTokenClassification"  # transformers' LOSS_MAPPING key (the Trainer reads it)

    def __init__(self, config: GPTNeoXConfig) -> None:
        super().__init__(config)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self._init_head(self.classifier)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        past_key_values: KVCache | Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        *,
        head_mask: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cache: KVCache | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
    ) -> TokenClassifierOutput | tuple:
        """Logits (B, T, num_labels); with ``labels`` (B, T) the mean cross-entropy over the tokens
        not labelled -100. The positional order is transformers 5.24's (the cache second).

        ``token_type_ids`` is accepted and ignored, as in transformers (GPT-NeoX has no token
        types); ``num_items_in_batch`` is accepted for the Trainer and unused. The output carries
        no cache, so none is built unless ``use_cache=True``.
        """
        out = self._backbone(input_ids, attention_mask, position_ids, inputs_embeds, head_mask, past_key_values,
                             cache, bool(use_cache), output_attentions, output_hidden_states)
        logits = self.classifier(self.dropout(out.last_hidden_state))  # (B, T, num_labels)
        loss = None
        if labels is not None:
            loss = token_classification_loss(logits, labels, self.config.num_labels)
        result = TokenClassifierOutput(
            loss=loss, logits=logits, hidden_states=out.hidden_states, attentions=out.attentions
        )
        return self._finish(result, return_dict)


class GPTNeoXForQuestionAnswering(_GPTNeoXHead):
    """GPT-NeoX with ``qa_outputs`` (D → 2): start and end logits for every token."""

    loss_type = "ForQuestionAnswering"  # transformers' LOSS_MAPPING key (the Trainer reads it)

    def __init__(self, config: GPTNeoXConfig) -> None:
        super().__init__(config)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self._init_head(self.qa_outputs)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        start_positions: torch.Tensor | None = None,
        end_positions: torch.Tensor | None = None,
        *,
        head_mask: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
    ) -> QuestionAnsweringModelOutput | tuple:
        """Start and end logits (B, T) each; with both ``start_positions`` and ``end_positions``
        (B,) the loss (CE(start) + CE(end)) / 2, positions outside [0, T) ignored.

        ``token_type_ids`` is accepted and ignored, as in transformers; ``num_items_in_batch`` is
        accepted for the Trainer and unused.
        """
        out = self._backbone(input_ids, attention_mask, position_ids, inputs_embeds, head_mask, None, None,
                             False, output_attentions, output_hidden_states)
        logits = self.qa_outputs(out.last_hidden_state)  # (B, T, 2)
        start_logits, end_logits = logits.split(1, dim=-1)
        start_logits = start_logits.squeeze(-1).contiguous()  # (B, T)
        end_logits = end_logits.squeeze(-1).contiguous()
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = question_answering_loss(start_logits, end_logits, start_positions, end_positions)
        result = QuestionAnsweringModelOutput(
            loss=loss, start_logits=start_logits, end_logits=end_logits,
            hidden_states=out.hidden_states, attentions=out.attentions,
        )
        return self._finish(result, return_dict)


# ============================================================================== losses


def sequence_classification_loss(pooled: torch.Tensor, labels: torch.Tensor, config: GPTNeoXConfig) -> torch.Tensor:
    """transformers' ForSequenceClassificationLoss: sets ``config.problem_type`` when unset."""
    n = config.num_labels
    if config.problem_type is None:
        if n == 1:
            config.problem_type = "regression"
        elif n > 1 and labels.dtype in (torch.long, torch.int):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    labels = labels.to(pooled.device)
    B = pooled.shape[0]
    if config.problem_type == "regression":
        if n == 1:
            if labels.numel() != B:
                raise ValueError(f"regression labels must hold one value per row ({B}), got shape {tuple(labels.shape)}")
            return F.mse_loss(pooled.squeeze(), labels.squeeze())
        _check_shape(labels, pooled.shape, "regression")
        return F.mse_loss(pooled, labels)
    if config.problem_type == "single_label_classification":
        if labels.numel() != B:
            raise ValueError(f"single-label classification needs one class id per row ({B}), got shape "
                             f"{tuple(labels.shape)}")
        return F.cross_entropy(pooled.view(-1, n), labels.view(-1), ignore_index=-100)
    _check_shape(labels, pooled.shape, "multi-label classification")
    return F.binary_cross_entropy_with_logits(pooled, labels)


def token_classification_loss(logits: torch.Tensor, labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    """Mean cross-entropy in fp32 over the tokens whose label is not -100."""
    if labels.numel() != logits.numel() // num_labels:
        raise ValueError(f"labels have shape {tuple(labels.shape)}; expected {tuple(logits.shape[:-1])} like input_ids")
    return F.cross_entropy(logits.view(-1, num_labels).float(), labels.view(-1).to(logits.device), ignore_index=-100)


def question_answering_loss(
    start_logits: torch.Tensor, end_logits: torch.Tensor, start_positions: torch.Tensor, end_positions: torch.Tensor
) -> torch.Tensor:
    """(CE(start) + CE(end)) / 2; positions are clamped to [0, T] and T is ignored."""
    if start_positions.dim() > 1:  # (B, 1), as multi-GPU gathering leaves them
        start_positions = start_positions.squeeze(-1)
    if end_positions.dim() > 1:
        end_positions = end_positions.squeeze(-1)
    T = start_logits.shape[1]
    start_positions = start_positions.to(start_logits.device).clamp(0, T)
    end_positions = end_positions.to(end_logits.device).clamp(0, T)
    start_loss = F.cross_entropy(start_logits, start_positions, ignore_index=T)
    end_loss = F.cross_entropy(end_logits, end_positions, ignore_index=T)
    return (start_loss + end_loss) / 2


def _check_shape(labels: torch.Tensor, want: torch.Size, what: str) -> None:
    if labels.shape != want:
        raise ValueError(f"{what} labels must have the logits' shape {tuple(want)}, got {tuple(labels.shape)}")


def _batch_size(input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None) -> int | None:
    if isinstance(input_ids, torch.Tensor):
        return input_ids.shape[0] if input_ids.dim() > 1 else 1
    if isinstance(inputs_embeds, torch.Tensor):
        return inputs_embeds.shape[0]
    return None  # the backbone names the problem
