"""``document-question-answering``: answer a question about a document, as ``pipeline("document-question-answering")``.

Two kinds of model, told apart by the model's config when it loads:

* **LayoutLM** (``AutoModelForDocumentQuestionAnswering``, a ``layoutlm`` config) reads the
  document's words and their boxes, not its pixels. An item gives them as ``words`` (strings)
  and ``boxes`` (``[x0, y0, x1, y1]`` integers normalised to 0-1000, one per word, as the
  pipeline's ``word_boxes``). Without them, a registry entry with ``ocr = true`` reads them from
  the image with Tesseract (``pytesseract`` and the ``tesseract`` binary on the worker), as the
  pipeline does; otherwise the item fails, asking for them. The answer is a span of words: the
  question's words and the document's are tokenised as a pair, the words alone cut into windows
  overlapping by ``doc_stride`` tokens (default half the window, at most 256), and in each window
  the start and end logits are soft-maxed over the document's tokens and ``[CLS]``; a span scores
  ``p_start * p_end`` (at most ``max_answer_len`` tokens, default 15), and the best ``top_k``
  over all windows are the answers: ``answer`` (its words joined by spaces), ``score``, and
  ``start`` / ``end``, the indices of its first and last word. ``handle_impossible_answer`` lets
  the empty answer compete, scored as the pipeline scores it.
* **Donut** (a ``VisionEncoderDecoderModel`` with a ``donut-swin`` encoder) reads the pixels and
  generates the answer after the prompt ``<s_docvqa><s_question>{question}</s_question><s_answer>``,
  greedily, at most ``max_new_tokens`` (default: the model's generation config, else the
  pipeline's 256); the answer is what the pipeline extracts (None when the model closes no
  answer), ``score`` the mean log-probability of the generated tokens, and ``output`` also has
  ``n_new_tokens`` and ``finish_reason``. See :mod:`sluice.families.donut`.

Stored: ``label`` and ``score`` of the best answer, ``output.answers`` (best first) and, when the
words came from OCR, ``output.words``.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
from dataclasses import dataclass
from typing import Any

from sluice.errors import ConfigError, ItemError, ValidationError
from sluice.families.base import Feature, ItemResult, TaskFamily
from sluice.families.common import bool_option, int_option, text_field
from sluice.families.donut import DonutReader, is_donut
from sluice.families.hf import load_model
from sluice.families.images import load_image, validate_image
from sluice.registry import ModelSpec
from sluice.settings import Settings

log = logging.getLogger("sluice.worker")

OPTIONS = ("top_k", "max_answer_len", "doc_stride", "handle_impossible_answer", "max_new_tokens")
#: greatest box coordinate: boxes are normalised to 0-1000, as LayoutLM's 2-D position embeddings expect
BOX_MAX = 1000
# Token roles in a window's ``span_mask``: padding, question and special tokens are 0.
_CONTEXT, _CLS = 1, 2


@dataclass(frozen=True)
class DocOptions:
    top_k: int = 1
    max_answer_len: int = 15
    doc_stride: int | None = None
    handle_impossible_answer: bool = False
    max_new_tokens: int | None = None


def doc_options(fields: dict[str, Any], where: str) -> DocOptions:
    """The options of an item (job params merged in) or of the job, checked."""
    return DocOptions(
        top_k=int_option(fields, "top_k", where, 1, 1),
        max_answer_len=int_option(fields, "max_answer_len", where, 15, 1),
        doc_stride=int_option(fields, "doc_stride", where, None, 0),
        handle_impossible_answer=bool_option(fields, "handle_impossible_answer", where),
        max_new_tokens=int_option(fields, "max_new_tokens", where, None, 1),
    )


def word_boxes(fields: dict[str, Any], item: int) -> tuple[list[str], list[list[int]]] | None:
    """The item's ``words`` and ``boxes``, checked; None when it gives neither."""
    words, boxes = fields.get("words"), fields.get("boxes")
    if words is None and boxes is None:
        return None
    if words is None or boxes is None:
        raise ValidationError(f"item {item}: give 'words' and 'boxes' together (one box per word), or neither")
    if not isinstance(words, list) or not words or not all(isinstance(w, str) for w in words):
        raise ValidationError(f"item {item}: field 'words' must be a non-empty list of strings")
    if not isinstance(boxes, list) or len(boxes) != len(words):
        got = f"{len(boxes)} boxes" if isinstance(boxes, list) else type(boxes).__name__
        raise ValidationError(
            f"item {item}: field 'boxes' must be a list of one box per word: {len(words)} words, {got}"
        )
    for n, box in enumerate(boxes):
        if not (isinstance(box, list) and len(box) == 4 and all(_coordinate(v) for v in box)
                and box[0] <= box[2] and box[1] <= box[3]):  # fmt: skip
            raise ValidationError(
                f"item {item}: boxes[{n}] must be [x0, y0, x1, y1], integers from 0 to {BOX_MAX} (normalised to the "
                f"page) with x0 <= x1 and y0 <= y1; got {box!r}"
            )
    return words, boxes


def _coordinate(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= BOX_MAX


class DocumentQuestionAnswering(TaskFamily):
    task = "document-question-answering"
    text_fields = ("question",)

    donut: DonutReader | None
    layout: _Extractive

    @classmethod
    def validate_params(cls, params: dict[str, Any], spec: ModelSpec) -> None:
        doc_options(params, "job params")

    @classmethod
    def validate_item(cls, fields: dict[str, Any], item: int, spec: ModelSpec, settings: Settings) -> None:
        if not str(text_field(fields, "question", item)).strip():
            raise ValidationError(f"item {item}: field 'question' is empty")
        given = word_boxes(fields, item)
        if fields.get("image") is None and given is None:
            raise ValidationError(
                f"item {item}: missing required field 'image' (the document; a LayoutLM model takes its "
                "'words' and 'boxes' instead)"
            )
        if fields.get("image") is not None:
            validate_image(fields, item, settings)
        doc_options(fields, f"item {item}")

    def setup(self) -> None:
        import transformers

        transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        config = transformers.AutoConfig.from_pretrained(self.spec.path, trust_remote_code=self.spec.trust_remote_code)
        self.donut = DonutReader(self.spec, self.device, self.settings.image_url_prefixes) if is_donut(config) else None
        if self.donut is not None:
            self.donut.setup()
        elif config.model_type == "layoutlm":
            self.layout = _Extractive(self)
            self.layout.setup()
        else:
            raise ConfigError(
                f"registry model {self.spec.name!r}: {config.model_type!r} is not supported for {self.task} "
                "(LayoutLM and Donut are)"
            )

    def preprocess(self, item: int, fields: dict[str, Any]) -> list[Feature]:
        try:
            options = doc_options(fields, f"item {item}")
        except ValidationError as exc:
            raise ItemError(str(exc)) from None
        if self.donut is not None:
            return [self.donut.feature(item, fields, options.max_new_tokens)]
        return self.layout.preprocess(item, fields, options)

    def collate(self, features: list[Feature]) -> dict[str, Any]:
        return self.donut.collate(features) if self.donut is not None else self.layout.collate(features)

    def forward(self, batch: dict[str, Any]) -> Any:
        return self.donut.forward(batch) if self.donut is not None else self.layout.forward(batch)

    def postprocess(self, features: list[Feature], outputs: Any) -> list[Any]:
        if self.donut is not None:
            return [self.donut.result(f, ids, lps) for f, (ids, lps) in zip(features, outputs, strict=True)]
        return self.layout.postprocess(features, outputs)

    def combine(self, item: int, fields: dict[str, Any], partials: list[Any]) -> ItemResult:
        if self.donut is not None:
            return super().combine(item, fields, partials)
        return self.layout.combine(item, fields, partials)

    def release(self) -> None:
        for part in (self.donut, getattr(self, "layout", None)):
            if part is not None:
                part.release()


def result(item: int, answers: list[dict[str, Any]], n_tokens: int, **extra: Any) -> ItemResult:
    """The stored row: the best answer as label and score, every answer in ``output.answers``."""
    best = answers[0] if answers else None
    return ItemResult(item=item, label=best["answer"] if best else None, score=best["score"] if best else None,
                      output={"answers": answers, **extra}, n_tokens=n_tokens)  # fmt: skip


@dataclass
class _Window:
    """What one window contributes: its best spans, its no-answer score, its tokens, and OCR'd words."""

    answers: list[dict[str, Any]]
    null_score: float
    n_tokens: int
    words: list[str] | None


class _Extractive:
    """LayoutLM: windows of question and words, spans of words scored as the pipeline scores them."""

    tokenizer: Any
    model: Any

    def __init__(self, family: DocumentQuestionAnswering) -> None:
        self.family = family
        self.spec = family.spec

    def setup(self) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(self.spec.path, trust_remote_code=self.spec.trust_remote_code)
        if not self.tokenizer.is_fast:
            raise ConfigError(f"registry model {self.spec.name!r}: {self.family.task} needs a fast tokenizer")
        self.model = load_model(self.spec, "AutoModelForDocumentQuestionAnswering", self.family.device)
        limits = [self.spec.max_length, self.model.config.max_position_embeddings, self.tokenizer.model_max_length]
        self.max_length = min(int(x) for x in limits if x and x < 1_000_000)
        self.n_special = self.tokenizer.num_special_tokens_to_add(pair=True)
        self.ocr = bool(self.spec.options.get("ocr")) and _tesseract_ready(self.spec.name)

    def preprocess(self, item: int, fields: dict[str, Any], options: DocOptions) -> list[Feature]:
        try:
            given = word_boxes(fields, item)
        except ValidationError as exc:
            raise ItemError(str(exc)) from None
        ocr = given is None
        words, boxes = self._ocr(item, fields) if given is None else given
        stride = min(self.max_length // 2, 256) if options.doc_stride is None else options.doc_stride
        question = str(fields["question"]).split()
        n_question = len(self.tokenizer(question, is_split_into_words=True, add_special_tokens=False)["input_ids"])
        room = self.max_length - self.n_special - n_question
        if stride >= room:
            raise ItemError(
                f"the question takes {n_question} tokens, leaving {max(room, 0)} per {self.max_length}-token window "
                f"for the document, not more than doc_stride ({stride}); lower 'doc_stride' or shorten the question"
            )
        enc = self.tokenizer(question, words, is_split_into_words=True, truncation="only_second",
                             max_length=self.max_length, stride=stride, return_overflowing_tokens=True,
                             return_token_type_ids=True)  # fmt: skip
        meta = {"options": options, "words": words, "ocr": ocr}
        return [self._window(item, enc, w, boxes, meta) for w in range(len(enc["input_ids"]))]

    def _window(self, item: int, enc: Any, w: int, boxes: list[list[int]], meta: dict[str, Any]) -> Feature:
        """One window: its tokens, each token's box (its word's; [1000]*4 for [SEP], zeros otherwise) and roles."""
        ids, sequence, word_ids = enc["input_ids"][w], enc.sequence_ids(w), enc.word_ids(w)
        cls_id, sep_id = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id
        bbox = [boxes[word] if seq == 1 else [BOX_MAX] * 4 if token == sep_id else [0] * 4
                for token, seq, word in zip(ids, sequence, word_ids, strict=True)]  # fmt: skip
        roles = [
            _CONTEXT if seq == 1 else _CLS if token == cls_id else 0 for token, seq in zip(ids, sequence, strict=True)
        ]
        row = {"input_ids": ids, "token_type_ids": enc["token_type_ids"][w], "attention_mask": enc["attention_mask"][w],
               "span_mask": roles}  # fmt: skip
        return Feature(item=item, ids=row, length=len(ids), meta={**meta, "bbox": bbox, "word_ids": word_ids})

    def _ocr(self, item: int, fields: dict[str, Any]) -> tuple[list[str], list[list[int]]]:
        """Words and boxes read from the image by Tesseract, when the registry entry allows it."""
        if not self.ocr:
            raise ItemError(
                f"item {item}: no 'words' and 'boxes' given and model {self.spec.name!r} runs no OCR; give the "
                "document's words and their boxes (integers 0-1000, [x0, y0, x1, y1] per word), or enable OCR "
                "with `ocr = true` in its registry entry on a worker with pytesseract and tesseract installed"
            )
        from transformers.pipelines.document_question_answering import apply_tesseract

        image = load_image(str(fields.get("image", "")), item, self.family.settings.image_url_prefixes)
        words, boxes = apply_tesseract(image, lang=self.spec.options.get("ocr_lang"), tesseract_config="")
        if not words:
            raise ItemError(f"item {item}: OCR found no words in the image")
        return list(words), [[int(v) for v in box] for box in boxes]

    def collate(self, features: list[Feature]) -> dict[str, Any]:
        import torch

        from sluice.families.collate import pad_features

        pad = {"input_ids": self.tokenizer.pad_token_id or 0}
        batch = pad_features(features, pad, self.family.device)
        width = batch["input_ids"].shape[1]
        bbox = torch.zeros((len(features), width, 4), dtype=torch.long)
        for row, feature in enumerate(features):
            bbox[row, : feature.length] = torch.tensor(feature.meta["bbox"], dtype=torch.long)
        batch["bbox"] = bbox.to(self.family.device)
        batch["max_answer_len"] = torch.tensor([f.meta["options"].max_answer_len for f in features],
                                               device=batch["input_ids"].device)  # fmt: skip
        batch["top_k"] = max(f.meta["options"].top_k for f in features)
        return batch

    def forward(self, batch: dict[str, Any]) -> Any:
        """Each window's best spans ``(scores, starts, ends)`` and no-answer score; a score of -1 is no span."""
        import torch

        names = ("input_ids", "bbox", "attention_mask", "token_type_ids")
        out = self.model(**{k: batch[k] for k in names})
        mask = batch["span_mask"]
        # As the pipeline: logits outside the document and [CLS] are -10000, softmax over the window.
        p_start = torch.softmax(out.start_logits.float().masked_fill(mask == 0, -10000.0), dim=-1)
        p_end = torch.softmax(out.end_logits.float().masked_fill(mask == 0, -10000.0), dim=-1)
        null = p_start[:, 0] * p_end[:, 0]
        p_start[:, 0] = p_end[:, 0] = 0.0
        # Band of ends: span (s, s + d) for d < max_answer_len, both ends in the document.
        n_rows, width = p_start.shape
        band = min(int(batch["max_answer_len"].max()), width)
        offsets = torch.arange(band, device=mask.device)
        ends = (torch.arange(width, device=mask.device)[:, None] + offsets[None, :]).clamp(max=width - 1)
        inside = (torch.arange(width, device=mask.device)[:, None] + offsets[None, :]) < width
        document = mask == _CONTEXT
        valid = (document[:, :, None] & document[:, ends] & inside[None]
                 & (offsets[None, None, :] < batch["max_answer_len"][:, None, None]))  # fmt: skip
        scores = (p_start[:, :, None] * p_end[:, ends]).masked_fill(~valid, -1.0)
        top, flat = scores.reshape(n_rows, -1).topk(min(batch["top_k"], width * band), dim=1)
        starts = torch.div(flat, band, rounding_mode="floor")
        ends_at = starts + flat % band
        return top.cpu().numpy(), starts.cpu().numpy(), ends_at.cpu().numpy(), null.cpu().numpy()

    def postprocess(self, features: list[Feature], outputs: Any) -> list[_Window]:
        top, starts, ends, null = outputs
        windows = []
        for row, feature in enumerate(features):
            words, word_ids = feature.meta["words"], feature.meta["word_ids"]
            answers = []
            for j in range(min(feature.meta["options"].top_k, top.shape[1])):
                first, last = word_ids[int(starts[row, j])], word_ids[int(ends[row, j])]
                if top[row, j] < 0 or first is None or last is None:
                    continue
                answers.append({"score": float(top[row, j]), "answer": " ".join(words[first : last + 1]),
                                "start": first, "end": last})  # fmt: skip
            windows.append(_Window(answers, float(null[row]), feature.length, words if feature.meta["ocr"] else None))
        return windows

    def combine(self, item: int, fields: dict[str, Any], partials: list[Any]) -> ItemResult:
        options = doc_options(fields, f"item {item}")
        answers = [a for window in partials for a in window.answers]
        if options.handle_impossible_answer:
            answers.append({"score": min(w.null_score for w in partials), "answer": "", "start": 0, "end": 0})
        answers = sorted(answers, key=lambda a: a["score"], reverse=True)[: options.top_k]
        words = partials[0].words
        return result(item, answers, sum(w.n_tokens for w in partials), **({"words": words} if words else {}))

    def release(self) -> None:
        self.model = None
        self.tokenizer = None


def _tesseract_ready(name: str) -> bool:
    """Whether OCR can run here; a warning (once, at load) when the registry asks for it and it cannot."""
    if importlib.util.find_spec("pytesseract") is None:
        log.warning("model %s: ocr = true, but pytesseract is not installed; items without words fail", name)
        return False
    if shutil.which("tesseract") is None:
        log.warning("model %s: ocr = true, but the tesseract binary is not on PATH; items without words fail", name)
        return False
    return True
