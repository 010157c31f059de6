"""``question-answering``: extractive answers with ``AutoModelForQuestionAnswering``.

The span scoring is that of transformers 4.x ``pipeline("question-answering")`` (removed in 5):
the question and the context are tokenised as a pair, the context alone is truncated into
overlapping windows (``doc_stride`` tokens of overlap), and in each window the start and end
logits are soft-maxed over the context tokens and the first token (``[CLS]``, kept for
"no answer"). A span scores ``p_start * p_end`` with ``start <= end`` and at most
``max_answer_len`` tokens; the best ``top_k`` spans over all windows are answers, widened to whole
words and given as character offsets into the context. With ``handle_impossible_answer`` the
empty answer competes with score ``p_start[CLS] * p_end[CLS]`` (its lowest value over windows).

Windows of many items share a batch; the span search runs on the model's device over a band of
``max_answer_len`` end positions per start, so it costs ``tokens x max_answer_len``, not
``tokens^2``. Items are ``{"question": ..., "context": ...}``; the options come with the job or
with each item: ``top_k`` (1), ``doc_stride`` (``min(128, max_length // 4)``),
``max_answer_len`` (15), ``max_question_len`` (64 tokens; a longer question is cut) and
``handle_impossible_answer`` (false).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from functools import partial
from typing import Any

from sluice.errors import ConfigError, ValidationError
from sluice.families.base import Feature, ItemResult
from sluice.families.common import bool_option, int_option, text_field
from sluice.families.hf import HFTextFamily, Prepared
from sluice.registry import ModelSpec
from sluice.settings import Settings

# Token roles in a window's ``span_mask`` row: padding and question/special tokens are 0.
_CONTEXT, _CLS = 1, 2


@dataclass(frozen=True)
class QAOptions:
    top_k: int = 1
    doc_stride: int | None = None
    max_answer_len: int = 15
    max_question_len: int = 64
    handle_impossible_answer: bool = False


def qa_options(fields: dict[str, Any], item: int, max_length: int | None = None) -> QAOptions:
    """The item's options (job params merged in), checked; ``max_length`` bounds ``doc_stride`` when known."""
    where = f"item {item}"
    doc_stride = int_option(fields, "doc_stride", where, None, 0)
    if doc_stride is not None and max_length and doc_stride >= max_length:
        raise ValidationError(
            f"item {item}: field 'doc_stride' ({doc_stride}) must be smaller than the model's max length ({max_length})"
        )
    return QAOptions(
        top_k=int_option(fields, "top_k", where, 1, 1),
        doc_stride=doc_stride,
        max_answer_len=int_option(fields, "max_answer_len", where, 15, 1),
        max_question_len=int_option(fields, "max_question_len", where, 64, 1),
        handle_impossible_answer=bool_option(fields, "handle_impossible_answer", where),
    )


#: an item ready for windowing: ``(item, (position in the chunk, question as cut, options))``
_Entry = tuple[int, tuple[int, str, QAOptions]]


@dataclass
class _Window:
    """What one window contributes: its best spans (character offsets) and its no-answer score."""

    answers: list[dict[str, Any]]
    null_score: float
    n_tokens: int


def _char_span(encoding: Any, start: int, end: int) -> tuple[int, int]:
    """Token span to context characters, widened to whole words as the 4.x pipeline does.

    Tokens without a word (tokenizers that give no word ids) keep their plain token offsets.
    """
    first_word, last_word = encoding.token_to_word(start), encoding.token_to_word(end)
    first_chars = None if first_word is None else encoding.word_to_chars(first_word, sequence_index=1)
    last_chars = None if last_word is None else encoding.word_to_chars(last_word, sequence_index=1)
    if first_chars is None or last_chars is None:
        return int(encoding.offsets[start][0]), int(encoding.offsets[end][1])
    return int(first_chars[0]), int(last_chars[1])


class QuestionAnswering(HFTextFamily):
    task = "question-answering"
    auto_class = "AutoModelForQuestionAnswering"
    text_fields = ("question", "context")

    @classmethod
    def validate_item(cls, fields: dict[str, Any], item: int, spec: ModelSpec, settings: Settings) -> None:
        for name in ("question", "context"):
            if not str(text_field(fields, name, item)).strip():
                raise ValidationError(f"item {item}: field {name!r} is empty")
        qa_options(fields, item, spec.max_length)

    def setup(self) -> None:
        super().setup()
        if not self.tokenizer.is_fast:
            raise ConfigError(
                f"registry model {self.spec.name!r}: question-answering needs a fast tokenizer "
                "(character offsets); this model only has a slow one"
            )
        self.n_special = self.tokenizer.num_special_tokens_to_add(pair=True)
        self.default_stride = min(128, self.max_length // 4)

    # preprocessing -----------------------------------------------------------------------
    def preprocess_many(self, items: list[tuple[int, dict[str, Any]]]) -> Prepared:
        """Windows of every item; items sharing a ``doc_stride`` are tokenised in one call."""
        out: Prepared = [[] for _ in items]
        groups: dict[int, list[_Entry]] = defaultdict(list)
        questions = self.tokenizer(
            [str(fields.get("question", "")) for _, fields in items],
            add_special_tokens=False,
            return_offsets_mapping=True,
            verbose=False,  # a question over the model's length is cut below, no warning needed
        )
        for pos, (item, fields) in enumerate(items):
            try:
                options = qa_options(fields, item, self.max_length)
                question = self._question(str(fields["question"]), questions["offset_mapping"][pos], options)
                stride = self.default_stride if options.doc_stride is None else options.doc_stride
                self._check_room(question, stride, questions["input_ids"][pos], options)
            except (ValidationError, KeyError) as exc:
                out[pos] = ItemResult(item=item, error=str(exc))
                continue
            groups[stride].append((item, (pos, question, options)))
        for stride, group in groups.items():
            prepared = self.batched(group, partial(self._windows, items, stride=stride))
            for (_, (pos, _, _)), entry in zip(group, prepared, strict=True):
                out[pos] = entry
        for pos, (item, _) in enumerate(items):
            entry = out[pos]
            if isinstance(entry, list) and not any(_CONTEXT in f.ids["span_mask"] for f in entry):
                out[pos] = ItemResult(item=item, error="the context has no tokens to answer from")
        return out

    @staticmethod
    def _question(question: str, offsets: list[tuple[int, int]], options: QAOptions) -> str:
        """The question cut after its ``max_question_len``-th token."""
        if len(offsets) <= options.max_question_len:
            return question
        return question[: offsets[options.max_question_len - 1][1]]

    def _check_room(self, question: str, stride: int, ids: list[int], options: QAOptions) -> None:
        # tokenizers panics (not an Exception) unless the stride is below the context room per window.
        n_question = len(ids)
        if n_question > options.max_question_len:
            n_question = len(self.tokenizer(question, add_special_tokens=False)["input_ids"])
        room = self.max_length - self.n_special - n_question
        if stride >= room:
            raise ValidationError(
                f"the question takes {n_question} tokens, leaving {max(room, 0)} per {self.max_length}-token window "
                f"for the context, not more than doc_stride ({stride}); lower 'doc_stride' or 'max_question_len'"
            )

    def _windows(self, items: list[tuple[int, dict[str, Any]]], group: list[_Entry], stride: int) -> Prepared:
        """The windows of each entry of ``group`` (question and context), from one tokenizer call."""
        enc = self.tokenizer(
            [question for _, (_, question, _) in group],
            [str(items[pos][1]["context"]) for _, (pos, _, _) in group],
            truncation="only_second",
            max_length=self.max_length,
            stride=stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )
        names = [name for name in self.tokenizer.model_input_names if name in enc]
        cls_id = self.tokenizer.cls_token_id
        windows: list[list[Feature]] = [[] for _ in group]
        for row, sample in enumerate(enc["overflow_to_sample_mapping"]):
            item, (_, _, options) = group[sample]
            encoding = enc.encodings[row]
            ids = {name: enc[name][row] for name in names}
            # The 4.x pipeline keeps every [CLS] out of the mask: it takes part in the softmax.
            ids["span_mask"] = [
                _CONTEXT if seq == 1 else _CLS if token == cls_id else 0
                for seq, token in zip(encoding.sequence_ids, encoding.ids, strict=True)
            ]
            meta = {"encoding": encoding, "options": options}
            windows[sample].append(Feature(item=item, ids=ids, length=len(encoding.ids), meta=meta))
        return windows  # type: ignore[return-value]

    # model -------------------------------------------------------------------------------
    def collate(self, features: list[Feature]) -> dict[str, Any]:
        import torch

        batch = super().collate(features)
        lengths = [f.meta["options"].max_answer_len for f in features]
        batch["max_answer_len"] = torch.tensor(lengths, device=batch["span_mask"].device)
        batch["top_k"] = max(f.meta["options"].top_k for f in features)
        return batch

    def forward(self, batch: dict[str, Any]) -> Any:
        """Best spans per window as ``(scores, starts, ends, null_scores)``; a score of -1 is no span."""
        import torch

        out = self.model(**self.model_inputs(batch))
        mask = batch["span_mask"]
        keep = mask > 0
        p_start = torch.softmax(out.start_logits.float().masked_fill(~keep, float("-inf")), dim=-1)
        p_end = torch.softmax(out.end_logits.float().masked_fill(~keep, float("-inf")), dim=-1)
        null = p_start[:, 0] * p_end[:, 0]
        p_start[:, 0] = 0.0
        p_end[:, 0] = 0.0
        # Band of candidate ends: span (s, s + d) for d < max_answer_len, both ends in the context.
        n_rows, width = p_start.shape
        band = min(int(batch["max_answer_len"].max()), width)
        offsets = torch.arange(band, device=mask.device)
        ends = torch.arange(width, device=mask.device)[:, None] + offsets[None, :]
        inside = ends < width
        ends = ends.clamp(max=width - 1)
        context = mask == _CONTEXT
        valid = (
            context[:, :, None]
            & context[:, ends]
            & inside[None]
            & (offsets[None, None, :] < batch["max_answer_len"][:, None, None])
        )
        scores = (p_start[:, :, None] * p_end[:, ends]).masked_fill(~valid, -1.0)
        top, flat = scores.reshape(n_rows, -1).topk(min(batch["top_k"], width * band), dim=1)
        starts = torch.div(flat, band, rounding_mode="floor")
        return (
            top.cpu().numpy(),
            starts.cpu().numpy(),
            (starts + flat % band).cpu().numpy(),
            null.cpu().numpy(),
        )

    def postprocess(self, features: list[Feature], outputs: Any) -> list[_Window]:
        top, starts, ends, null = outputs
        windows = []
        for row, feature in enumerate(features):
            encoding = feature.meta["encoding"]
            answers = []
            for j in range(min(feature.meta["options"].top_k, top.shape[1])):
                if top[row, j] < 0:
                    break
                first, last = _char_span(encoding, int(starts[row, j]), int(ends[row, j]))
                answers.append({"score": float(top[row, j]), "start": first, "end": last})
            windows.append(_Window(answers, float(null[row]), feature.length))
        return windows

    def combine(self, item: int, fields: dict[str, Any], partials: list[Any]) -> ItemResult:
        options = qa_options(fields, item)
        context = str(fields["context"])
        answers = [{"answer": context[a["start"] : a["end"]], **a} for window in partials for a in window.answers]
        if options.handle_impossible_answer:
            null = min(window.null_score for window in partials)
            answers.append({"answer": "", "score": null, "start": 0, "end": 0})
        answers = sorted(answers, key=lambda a: a["score"], reverse=True)[: options.top_k]
        best = answers[0] if answers else None
        return ItemResult(
            item=item,
            label=best["answer"] if best else None,  # the store cuts it to the column; output keeps it whole
            score=best["score"] if best else None,
            output={"answers": answers},
            n_tokens=sum(window.n_tokens for window in partials),
        )
