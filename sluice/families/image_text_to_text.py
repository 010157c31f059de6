"""``image-text-to-text``: a vision-language model (LLaVA, Idefics3/SmolVLM) continues a conversation about images.

An item is a conversation ``{"messages": [{"role": ..., "content": ...}, ...]}`` in the chat
format of ``pipeline("image-text-to-text")``: a message's ``content`` is a string or a list of
parts, ``{"type": "text", "text": ...}`` or ``{"type": "image", "image": path-or-URL}`` (``url``
or ``path`` instead of ``image`` also work, as in transformers' own format). An item may instead
be ``{"image": ..., "text": ...}``: one user message with the image, then the text (``image`` is
optional). Images are local paths, or URLs under ``SLUICE_IMAGE_URL_PREFIXES``, checked at submit
time and loaded at run time as the image families do (:mod:`sluice.families.images`).

The prompt is built exactly as the pipeline builds it: ``processor.apply_chat_template`` with the
images, ``add_generation_prompt`` unless the last message is the assistant's (then its text is
continued); a model without a chat template refuses ``messages`` at submit time and takes an
``image`` + ``text`` item's text as the whole prompt (it must then hold the model's image token).

The output is that of ``text-generation``: the new text in ``output.generated_text``,
``n_new_tokens``, ``finish_reason`` (``eos`` or ``length``) and ``score`` = the mean
log-probability of the new tokens (see :mod:`sluice.families.generation`), with its options
(``max_new_tokens`` default 32, beams, seeded sampling, ...). Prompts are left-padded and images
go with their rows, so an item answers the same in any batch. An item's image tokens count in its
length, so ``max_batch_tokens`` bounds the vision work of a batch too; a prompt that does not fit
the model's length limit together with ``max_new_tokens`` fails (cutting it could cut an image).
"""

from __future__ import annotations

from typing import Any

from sluice.errors import ItemError, ValidationError
from sluice.families.base import Feature
from sluice.families.common import has_chat_template, text_field
from sluice.families.generation import GenerationFamily
from sluice.families.hf import Prepared
from sluice.families.images import load_image, validate_image
from sluice.registry import ModelSpec
from sluice.settings import Settings

#: keys an image part may name its source with (transformers reads the same ones)
IMAGE_KEYS = ("image", "url", "path")
#: the batch key of each row's processor tensors other than token ids (pixel values, ...)
VISION = "vision"


def image_source(part: dict[str, Any], where: str) -> str:
    """The one path or URL an image part names; a :class:`ValidationError` naming ``where`` otherwise."""
    given = [key for key in IMAGE_KEYS if key in part]
    if len(given) != 1 or not isinstance(part[given[0]], str):
        raise ValidationError(f"{where}: an image part needs exactly one of 'image', 'url' or 'path', a string")
    return str(part[given[0]])


def check_messages(fields: dict[str, Any], item: int, settings: Settings) -> None:
    """A conversation: non-empty, each message a role and a string or a list of text and image parts.

    Its size is bounded at submit like every item's fields (``SLUICE_MAX_ITEM_CHARS`` as JSON).
    """
    messages = fields.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValidationError(f"item {item}: field 'messages' must be a non-empty list of role/content objects")
    for n, message in enumerate(messages):
        where = f"item {item}: messages[{n}]"
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ValidationError(f"{where} must be an object with a string 'role'")
        content = message.get("content")
        if isinstance(content, str):
            continue
        if not isinstance(content, list):
            raise ValidationError(f"{where}.content must be a string or a list of text and image parts")
        for k, part in enumerate(content):
            _check_part(part, f"{where}.content[{k}]", item, settings)


def _check_part(part: Any, where: str, item: int, settings: Settings) -> None:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text":
        if not isinstance(part.get("text"), str):
            raise ValidationError(f"{where}: a text part needs a string 'text'")
        return
    if kind == "image":
        source = image_source(part, where)
        try:
            validate_image({"image": source}, item, settings)
        except ValidationError as exc:
            raise ValidationError(f"{where}: {exc}") from None
        return
    raise ValidationError(f'{where} must be {{"type": "text", "text": ...}} or {{"type": "image", "image": ...}}')


class ImageTextToText(GenerationFamily):
    task = "image-text-to-text"
    auto_class = "AutoModelForImageTextToText"
    options = ("max_new_tokens", "min_new_tokens", "do_sample", "seed", "num_beams", "temperature", "top_p", "top_k",
               "typical_p", "epsilon_cutoff", "repetition_penalty", "no_repeat_ngram_size", "bad_words",
               "suppress_tokens", "stop")  # fmt: skip
    default_max_new_tokens = 32
    padding_side = "left"

    processor: Any

    # submit time -------------------------------------------------------------------------
    @classmethod
    def validate_item(cls, fields: dict[str, Any], item: int, spec: ModelSpec, settings: Settings) -> None:
        if "messages" in fields:
            if fields.get("text") is not None or fields.get("image") is not None:
                raise ValidationError(f"item {item}: give either 'messages' or 'image' and 'text', not both")
            check_messages(fields, item, settings)
            if has_chat_template(spec.path) is False:
                raise ValidationError(
                    f"item {item}: model {spec.name!r} has no chat template, so 'messages' cannot be rendered; "
                    "send 'image' and 'text' (the text then has to hold the model's image token)"
                )
        else:
            text_field(fields, "text", item)
            if fields.get("image") is not None:
                validate_image(fields, item, settings)
        cls.check_generation(fields, item, spec, settings)
        new = fields.get("max_new_tokens") or cls.default_max_new_tokens
        if spec.max_length and new >= spec.max_length:
            raise ValidationError(
                f"item {item}: 'max_new_tokens' ({new}) leaves no room for a prompt within model "
                f"{spec.name!r}'s max_length of {spec.max_length} tokens"
            )

    # run time ----------------------------------------------------------------------------
    def setup(self) -> None:
        import transformers

        super().setup()
        self.processor = transformers.AutoProcessor.from_pretrained(  # type: ignore[no-untyped-call]
            self.spec.path, trust_remote_code=self.spec.trust_remote_code
        )
        self.tokenizer = self.processor.tokenizer
        text_config = self.model.config.get_text_config()
        limits = [self.spec.max_length, getattr(text_config, "max_position_embeddings", None), self.max_length]
        self.max_length = min(x for x in limits if x)

    def preprocess_many(self, items: list[tuple[int, dict[str, Any]]]) -> Prepared:
        """One item at a time: each has its own images, which may fail alone."""
        return self.preprocess_each(items)

    def preprocess(self, item: int, fields: dict[str, Any]) -> list[Feature]:
        """The item's prompt (image tokens expanded) as a generation row; its other processor tensors in meta."""
        inputs = self.processed(item, fields)
        ids = inputs.pop("input_ids")[0].tolist()
        inputs.pop("attention_mask", None)
        feature = self.feature(item, fields, ids)
        # Per-token inputs (Gemma 3's token_type_ids, ...) are padded with the ids; the rest go with the row.
        per_token = [k for k, v in inputs.items() if hasattr(v, "shape") and tuple(v.shape) == (1, len(ids))]
        feature.ids.update({k: inputs.pop(k)[0].tolist() for k in per_token})
        feature.meta["vision"] = inputs
        return [feature]

    def processed(self, item: int, fields: dict[str, Any]) -> dict[str, Any]:
        """The processor's tensors for one item (token ids with image tokens expanded, pixel values, ...)."""
        prefixes = self.settings.image_url_prefixes
        if "messages" not in fields:
            image = fields.get("image")
            if self.processor.chat_template is None:
                images = [load_image(str(image), item, prefixes)] if image is not None else None
                return dict(self.processor(text=str(fields["text"]), images=images, return_tensors="pt"))
            parts = [{"type": "image", "image": image}] if image is not None else []
            fields = {"messages": [{"role": "user", "content": [*parts, {"type": "text", "text": fields["text"]}]}]}
        messages = [self._loaded(message, item) for message in fields["messages"]]
        cont = messages[-1]["role"] == "assistant"  # the pipeline continues an assistant's last message
        out = self.processor.apply_chat_template(messages, add_generation_prompt=not cont, continue_final_message=cont,
                                                 tokenize=True, return_dict=True, return_tensors="pt")  # fmt: skip
        return dict(out)

    def _loaded(self, message: dict[str, Any], item: int) -> dict[str, Any]:
        """A copy of ``message`` whose image parts hold the images, loaded under the worker's URL policy."""
        content = message.get("content")
        if not isinstance(content, list):
            return dict(message)
        parts = []
        for k, part in enumerate(content):
            if isinstance(part, dict) and part.get("type") == "image":
                source = image_source(part, f"content[{k}]")
                part = {"type": "image", "image": load_image(source, item, self.settings.image_url_prefixes)}
            parts.append(part)
        return {**message, "content": parts}

    def fit(self, ids: list[int], options: dict[str, Any]) -> list[int]:
        """The prompt as it is: cutting it could cut an image's tokens, so one too long fails."""
        new = self.new_token_limit(options)
        if len(ids) + new > self.max_length:
            raise ItemError(
                f"the prompt takes {len(ids)} tokens (its images included); with max_new_tokens={new} that is over "
                f"the model's {self.max_length}-token limit: send fewer or smaller images, or less text"
            )
        return ids

    # model -------------------------------------------------------------------------------
    def collate(self, features: list[Feature]) -> dict[str, Any]:
        """Token rows as every generation family pads them, and each row's processor tensors (its images)."""
        batch = super().collate(features)
        batch[VISION] = [f.meta["vision"] for f in features]
        return batch

    def rows_of(self, batch: dict[str, Any], rows: list[int]) -> dict[str, Any]:
        """Those rows' tokens, and their images merged in row order, on the device."""
        inputs = super().rows_of({k: v for k, v in batch.items() if k != VISION}, rows)
        for name, tensor in merge_vision([batch[VISION][r] for r in rows]).items():
            dtype = self.model.dtype if tensor.is_floating_point() else tensor.dtype
            inputs[name] = tensor.to(self.device, dtype=dtype)
        return inputs

    def release(self) -> None:
        super().release()
        self.processor = None


def merge_vision(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The processor outputs of several items as one batch's, in row order.

    Per-image tensors (LLaVA's ``pixel_values``: images x channels x height x width) are
    concatenated; per-item tensors with a first dimension of 1 whose other dimensions differ
    (Idefics3's ``pixel_values``: 1 x images x ..., and its ``pixel_attention_mask``) are padded
    with zeros, which the model treats as no image, then concatenated. Rows without an input
    (text-only items) add nothing to it.
    """
    import torch

    out: dict[str, Any] = {}
    for name in dict.fromkeys(k for row in rows for k in row):
        parts = [row[name] for row in rows if name in row]
        if not all(isinstance(p, torch.Tensor) for p in parts):
            raise ItemError(f"the processor's {name!r} is not a tensor; this model is not supported")
        if len({tuple(p.shape[1:]) for p in parts}) > 1:
            if any(p.shape[0] != 1 for p in parts):
                raise ItemError(f"the processor's {name!r} differs in shape between items and cannot be batched")
            widest = [max(p.shape[d] for p in parts) for d in range(1, parts[0].dim())]
            parts = [_pad_to(p, widest) for p in parts]
        out[name] = torch.cat(parts)
    return out


def _pad_to(tensor: Any, shape: list[int]) -> Any:
    """``tensor`` (first dimension 1) zero-padded at the end of every other dimension up to ``shape``."""
    import torch

    out = torch.zeros((1, *shape), dtype=tensor.dtype)
    out[(slice(None), *(slice(0, n) for n in tensor.shape[1:]))] = tensor
    return out
