"""``image-to-text``: caption an image with a GIT, BLIP or vision-encoder-decoder model, optionally after a prompt.

transformers 5 redirects ``pipeline("image-to-text")`` to ``image-text-to-text``, which needs a
text prompt and fails on GIT; Sluice keeps what the 4.x ``ImageToTextPipeline`` did, one image at
a time through ``model.generate`` (see :mod:`sluice.families.vision_generation` for how each kind
of model is driven and why batching never changes a caption).

An item is ``{"image": path-or-URL}``, optionally with ``"text"``: a prompt the caption continues
(GIT and BLIP; a vision-encoder-decoder model takes none). The output is that of
``text-generation``: the new text only in ``output.generated_text`` (the 4.x pipeline returned the
prompt followed by the caption; without a prompt the two are the same), ``n_new_tokens``,
``finish_reason`` (``eos`` or ``length``), and ``score`` = the mean log-probability of the new
tokens. Options: ``max_new_tokens`` (default: the model's generation config, as the pipeline),
``min_new_tokens``, ``num_beams``, ``length_penalty``, ``do_sample`` with ``seed`` and
``temperature`` / ``top_k`` / ``top_p``, ``repetition_penalty``, ``no_repeat_ngram_size``.

A checkpoint saved as a question-answering model (``BlipForQuestionAnswering``) is refused: it
would load as a captioner with its caption weights missing; register it under
``visual-question-answering``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from sluice.errors import ConfigError, ItemError, ValidationError
from sluice.families.common import text_field
from sluice.families.images import validate_image
from sluice.families.vision_generation import ImagePromptGeneration, architectures
from sluice.registry import ModelSpec
from sluice.settings import Settings


def question_answering_checkpoint(spec: ModelSpec) -> str | None:
    """The checkpoint's architecture when it is a VQA model (which must not load as a captioner), else None."""
    names = architectures(spec.path) or ()
    return next((n for n in names if n.endswith("ForQuestionAnswering")), None)


def _refusal(spec: ModelSpec, architecture: str) -> str:
    return (
        f"registry model {spec.name!r} is a visual question answering checkpoint ({architecture}), not a "
        'captioner; register it with task = "visual-question-answering"'
    )


class ImageToText(ImagePromptGeneration):
    task = "image-to-text"
    auto_class = "AutoModelForImageTextToText"
    text_fields: ClassVar[tuple[str, ...]] = ("text",)

    @classmethod
    def validate_params(cls, params: dict[str, Any], spec: ModelSpec) -> None:
        architecture = question_answering_checkpoint(spec)
        if architecture:
            raise ValidationError(_refusal(spec, architecture))
        super().validate_params({k: v for k, v in params.items() if k != "text"}, spec)

    @classmethod
    def validate_item(cls, fields: dict[str, Any], item: int, spec: ModelSpec, settings: Settings) -> None:
        validate_image(fields, item, settings)
        text_field(fields, "text", item, required=False)
        cls.check_generation(fields, item, spec, settings)

    def setup(self) -> None:
        architecture = question_answering_checkpoint(self.spec)
        if architecture:
            raise ConfigError(_refusal(self.spec, architecture))
        super().setup()

    def prompt_ids(self, item: int, fields: dict[str, Any]) -> list[int]:
        """The prompt as the 4.x pipeline built it for each kind of model (see the helper module)."""
        prompt = fields.get("text")
        if self.kind == "vision-encoder-decoder":
            if prompt is not None:
                raise ItemError("this vision-encoder-decoder model captions without a prompt: leave out 'text'")
            return []
        if self.kind == "blip":  # [CLS] prompt [SEP]; BLIP's generate puts its bos first and drops the [SEP]
            return list(self.tokenizer(prompt or "", truncation=True, max_length=self.max_length)["input_ids"])
        if prompt is None:  # GIT, no prompt: generate() starts from bos
            return [int(self.model.generation_config.bos_token_id)]
        tokens = self.tokenizer(prompt, add_special_tokens=False, truncation=True, max_length=self.max_length - 1)
        return [int(self.tokenizer.cls_token_id), *tokens["input_ids"]]
