"""``visual-question-answering``: answer a question about an image, as the 4.x ``VisualQuestionAnsweringPipeline``.

transformers 5 removed that pipeline; Sluice keeps what it did. An item is ``{"image": path-or-URL,
"question": "..."}``. Two kinds of model, told apart by the checkpoint's ``config.architectures``:

* **a classifier over answers** (ViLT, ``ViltForQuestionAnswering``): the question (tokenised with
  the tokenizer's defaults, cut to the model's text length, 40 tokens for ViLT, where the pipeline
  would fail) and the image in one forward pass; answers are scored with a sigmoid, each on its
  own, and the best ``top_k`` (param, default 5, at most the number of answers) are kept in
  ``output.answers`` (``{"score", "answer"}``, best first), the best as ``label`` / ``score``.
  Questions are right-padded (masked, so a batch answers as one item alone), and only images of
  one processed shape share a forward pass;
* **a generator** (BLIP, ``BlipForQuestionAnswering``): ``generate`` writes the answer
  (:mod:`sluice.families.vision_generation` says how, and why batching never changes it). ``label``
  and ``output.answer`` hold it, stripped, as the pipeline returned it; ``output`` also has
  ``generated_text``, ``n_new_tokens`` and ``finish_reason``, and ``score`` is the mean
  log-probability of the answer's tokens. Generation options are those of ``image-to-text`` except
  ``top_k``, which here is always the number of answers (a generator gives one; the pipeline
  ignored it too).

A captioning checkpoint (``BlipForConditionalGeneration``, GIT) is refused, at submit time where the
registry entry is a local directory: ``AutoModelForVisualQuestionAnswering`` would load it with its
question encoder missing. Generation options sent to a classifier are refused the same way.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from sluice.errors import ConfigError, ValidationError
from sluice.families.base import Feature, ItemResult, TaskFamily
from sluice.families.common import int_option, model_labels, text_field
from sluice.families.generation import check_options
from sluice.families.hf import Prepared
from sluice.families.images import HFImageFamily, validate_image
from sluice.families.vision_generation import ImagePromptGeneration, architectures
from sluice.registry import ModelSpec
from sluice.settings import Settings

TASK = "visual-question-answering"
AUTO_CLASS = "AutoModelForVisualQuestionAnswering"
DEFAULT_TOP_K = 5
#: architectures that write their answers (the rest of ``*ForQuestionAnswering`` classify)
GENERATORS = ("BlipForQuestionAnswering",)
#: the options of the generative route: image-to-text's, ``top_k`` being the number of answers here
GENERATION_OPTIONS = tuple(o for o in ImagePromptGeneration.options if o != "top_k")


def top_k(fields: dict[str, Any], where: str) -> int:
    """How many answers a classifier keeps (default 5)."""
    return int(int_option(fields, "top_k", where, DEFAULT_TOP_K, 1))


def route(name: str, names: tuple[str, ...] | None) -> str | None:
    """``"generator"`` or ``"classifier"`` for a checkpoint's architectures; None when unknown (not read).

    Raises :class:`ConfigError` for a checkpoint that is not a VQA model, which
    ``AutoModelForVisualQuestionAnswering`` would still load, with random weights where it differs.
    """
    if names is None:
        return None
    if any(n in GENERATORS for n in names):
        return "generator"
    if any(n.endswith("ForQuestionAnswering") for n in names):
        return "classifier"
    hint = " (a captioner: register it with task = \"image-to-text\")" if any(
        n.endswith(("ForConditionalGeneration", "ForCausalLM")) for n in names) else ""  # fmt: skip
    raise ConfigError(
        f"registry model {name!r}: architecture {', '.join(names) or 'none'} is not a visual question answering "
        f"model{hint}; {TASK} takes ViLT-style classifiers and BlipForQuestionAnswering"
    )


def check_fields(fields: dict[str, Any], kind: str | None, where: str) -> None:
    """``top_k`` and the generation options; generation options for a classifier are refused."""
    top_k(fields, where)
    check_options(fields, GENERATION_OPTIONS, where)
    given = [k for k in GENERATION_OPTIONS if fields.get(k) is not None]
    if kind == "classifier" and given:
        raise ValidationError(
            f"{where}: {', '.join(map(repr, given))} only apply to generative models; this model classifies "
            "over a fixed set of answers (its option is top_k)"
        )


class VisualQuestionAnswering(TaskFamily):
    """Routes to :class:`VisualQuestionAnswering.Classifier` or :class:`VisualQuestionAnswering.Generator`."""

    task = TASK
    text_fields: ClassVar[tuple[str, ...]] = ("question",)

    @classmethod
    def validate_params(cls, params: dict[str, Any], spec: ModelSpec) -> None:
        unknown = sorted(set(params) - {"top_k", "question", *GENERATION_OPTIONS})
        if unknown:
            raise ValidationError(
                f"job params: unknown option(s) {', '.join(map(repr, unknown))} for {TASK}; "
                f"accepted: top_k, {', '.join(GENERATION_OPTIONS)}"
            )
        try:
            kind = route(spec.name, architectures(spec.path))
        except ConfigError as exc:
            raise ValidationError(str(exc)) from None
        check_fields(params, kind, "job params")

    @classmethod
    def validate_item(cls, fields: dict[str, Any], item: int, spec: ModelSpec, settings: Settings) -> None:
        validate_image(fields, item, settings)
        text_field(fields, "question", item)
        try:
            kind = route(spec.name, architectures(spec.path))
        except ConfigError as exc:
            raise ValidationError(str(exc)) from None
        check_fields(fields, kind, f"item {item}")

    # run time: everything goes to the route's own family ---------------------------------
    def setup(self) -> None:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(self.spec.path, trust_remote_code=self.spec.trust_remote_code)
        kind = route(self.spec.name, tuple(config.architectures or ()))
        inner = self.Generator if kind == "generator" else self.Classifier
        self.inner: TaskFamily = inner(self.spec, self.device, self.settings)
        self.inner.setup()
        self.model = getattr(self.inner, "model", None)  # held here too, so residency counts its bytes

    def preprocess(self, item: int, fields: dict[str, Any]) -> list[Feature]:
        return self.inner.preprocess(item, fields)

    def preprocess_many(self, items: list[tuple[int, dict[str, Any]]]) -> Prepared:
        return self.inner.preprocess_many(items)

    def collate(self, features: list[Feature]) -> dict[str, Any]:
        return self.inner.collate(features)

    def forward(self, batch: dict[str, Any]) -> Any:
        return self.inner.forward(batch)

    def postprocess(self, features: list[Feature], outputs: Any) -> list[Any]:
        return self.inner.postprocess(features, outputs)

    def release(self) -> None:
        self.inner.release()
        self.model = None

    class Classifier(HFImageFamily):
        """ViLT-style: image and question in, one sigmoid score per answer out."""

        task = TASK  # nested, so that family discovery (module-level classes) sees only the router
        auto_class = AUTO_CLASS
        processor_class = "AutoProcessor"

        def setup(self) -> None:
            super().setup()
            self.tokenizer = self.processor.tokenizer
            self.labels = model_labels(self.spec, self.model.config)
            limits = [self.spec.max_length, getattr(self.model.config, "max_position_embeddings", None),
                      self.tokenizer.model_max_length]  # fmt: skip
            self.max_length = min(x for x in limits if x)

        def preprocess(self, item: int, fields: dict[str, Any]) -> list[Feature]:
            (feature,) = super().preprocess(item, fields)
            enc = self.tokenizer(str(fields["question"]), truncation=True, max_length=self.max_length)
            feature.ids = {k: list(enc[k]) for k in self.tokenizer.model_input_names if k in enc}
            feature.length += len(feature.ids["input_ids"])
            feature.meta["top_k"] = min(top_k(fields, f"item {item}"), len(self.labels))
            return [feature]

        def collate(self, features: list[Feature]) -> dict[str, Any]:
            from sluice.families.collate import pad_features

            pad = {"input_ids": self.tokenizer.pad_token_id or 0, "attention_mask": 0, "token_type_ids": 0}
            return {**pad_features(features, pad, self.device), **super().collate(features)}

        def forward(self, batch: dict[str, Any]) -> Any:
            return self.model(**batch).logits.float().cpu().numpy()

        def postprocess(self, features: list[Feature], outputs: Any) -> list[ItemResult]:
            """Sigmoid, then the best ``top_k`` as ``torch.topk`` orders them (the pipeline's maths)."""
            import torch

            probs = torch.from_numpy(np.asarray(outputs, dtype=np.float32)).sigmoid()
            results = []
            for feature, row in zip(features, probs, strict=True):
                scores, ids = row.topk(feature.meta["top_k"])
                answers = [{"score": s, "answer": self.labels[i]} for s, i in zip(scores.tolist(), ids.tolist(),
                                                                                  strict=True)]  # fmt: skip
                results.append(ItemResult(item=feature.item, label=answers[0]["answer"], score=answers[0]["score"],
                                          output={"answers": answers}, n_tokens=feature.length))  # fmt: skip
            return results

        def release(self) -> None:
            super().release()
            self.tokenizer = None

    class Generator(ImagePromptGeneration):
        """BLIP-style: the question is encoded with the image, and a text decoder writes the answer."""

        task = TASK
        auto_class = AUTO_CLASS
        options = GENERATION_OPTIONS

        def prompt_ids(self, item: int, fields: dict[str, Any]) -> list[int]:
            """The question as the pipeline tokenised it (special tokens included), cut to the model's limit."""
            enc = self.tokenizer(str(fields["question"]), truncation=True, max_length=self.max_length)
            return list(enc["input_ids"])

        def fit(self, ids: list[int], options: dict[str, Any]) -> list[int]:
            """The question as it is: it is encoded, not continued, so it takes no room from the answer."""
            return ids

        def blip_new_tokens_start(self, inputs: dict[str, Any]) -> int:
            """BLIP's answer decoder starts from its bos token alone."""
            return 1

        def finished(self, feature: Feature, text: str, n: int, logprobs: list[float], reason: str) -> ItemResult:
            result = super().finished(feature, text, n, logprobs, reason)
            result.label = text.strip()
            result.output = {"answer": result.label, **(result.output or {})}
            return result
