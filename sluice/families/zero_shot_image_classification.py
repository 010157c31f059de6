"""``zero-shot-image-classification``: rank candidate labels for an image with a CLIP-style model.

Scores are those of ``transformers.pipeline("zero-shot-image-classification")``: each label is
put in ``hypothesis_template`` (default ``"This is a photo of {}."``), and the softmax of
``logits_per_image`` over the candidates ranks them (a sigmoid for SigLIP models, as the pipeline).

For CLIP-style models (``get_text_features`` / ``get_image_features`` and a ``logit_scale``) the
hypotheses' embeddings are computed once per distinct label set and template, and each batch only
runs the vision tower. Other models run whole on each group of images sharing a label set.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from sluice.families.base import Feature, ItemResult
from sluice.families.common import apply_score_function, candidate_labels, hypothesis_template, ranked
from sluice.families.images import HFImageFamily, validate_image
from sluice.registry import ModelSpec
from sluice.settings import Settings

DEFAULT_TEMPLATE = "This is a photo of {}."


def template(fields: dict[str, Any], where: str) -> str:
    """The hypothesis template (:func:`sluice.families.common.hypothesis_template`); ``where`` names item or job."""
    return hypothesis_template(fields, where, DEFAULT_TEMPLATE)


def _pooled(output: Any) -> Any:
    """``get_*_features`` return a tensor in older transformers, an output with ``pooler_output`` in newer."""
    import torch

    return output if isinstance(output, torch.Tensor) else output.pooler_output


class ZeroShotImageClassification(HFImageFamily):
    task = "zero-shot-image-classification"
    auto_class = "AutoModelForZeroShotImageClassification"
    processor_class = "AutoProcessor"

    @classmethod
    def validate_params(cls, params: dict[str, Any], spec: ModelSpec) -> None:
        template(params, "job params")

    @classmethod
    def validate_item(cls, fields: dict[str, Any], item: int, spec: ModelSpec, settings: Settings) -> None:
        validate_image(fields, item, settings)
        candidate_labels(fields, item)
        template(fields, f"item {item}")

    def setup(self) -> None:
        super().setup()
        self.tokenizer = self.processor.tokenizer
        model = self.model
        self.siglip = "siglip" in model.config.model_type
        # CLIP's maths (cosine times exp(logit_scale)) can be split into towers; anything else runs whole.
        self.split_towers = (
            hasattr(model, "get_text_features")
            and hasattr(model, "get_image_features")
            and hasattr(model, "logit_scale")
            and not hasattr(model, "logit_bias")
        )
        self._text_embeds: Any = lru_cache(maxsize=256)(self._embed_hypotheses)

    def item_meta(self, item: int, fields: dict[str, Any]) -> dict[str, Any]:
        labels = tuple(candidate_labels(fields, item))
        return {"labels": labels, "template": template(fields, f"item {item}")}

    def _tokenize(self, labels: tuple[str, ...], template: str) -> dict[str, Any]:
        """The hypotheses of a label set, tokenised as the pipeline does it."""
        kwargs: dict[str, Any] = {"padding": True}
        if self.siglip:
            kwargs.update(padding="max_length", max_length=64, truncation=True)
        enc = self.tokenizer([template.format(x) for x in labels], return_tensors="pt", **kwargs)
        return {name: tensor.to(self.device) for name, tensor in enc.items()}

    def _embed_hypotheses(self, labels: tuple[str, ...], template: str) -> Any:
        """Normalised text embeddings of a label set: one text forward per distinct set."""
        import torch

        with torch.inference_mode():
            embeds = _pooled(self.model.get_text_features(**self._tokenize(labels, template)))
            return embeds / embeds.norm(p=2, dim=-1, keepdim=True)

    def collate(self, features: list[Feature]) -> dict[str, Any]:
        batch = super().collate(features)
        batch["hypotheses"] = [(f.meta["labels"], f.meta["template"]) for f in features]
        return batch

    def forward(self, batch: dict[str, Any]) -> Any:
        """``logits_per_image`` for each image over its own candidate labels, as float32 rows."""
        pixels, hypotheses = batch["pixel_values"], batch["hypotheses"]
        rows: list[Any] = [None] * len(hypotheses)
        if self.split_towers:
            images = _pooled(self.model.get_image_features(pixel_values=pixels))
            images = images / images.norm(p=2, dim=-1, keepdim=True)
            scale = self.model.logit_scale.exp()
            for i, key in enumerate(hypotheses):
                text = self._text_embeds(*key)
                rows[i] = (scale * (text @ images[i])).float().cpu().numpy()
            return rows
        groups: dict[tuple[tuple[str, ...], str], list[int]] = {}
        for i, key in enumerate(hypotheses):
            groups.setdefault(key, []).append(i)
        for key, idx in groups.items():
            logits = self.model(**self._tokenize(*key), pixel_values=pixels[idx]).logits_per_image
            for i, row in zip(idx, logits.float().cpu().numpy(), strict=True):
                rows[i] = row
        return rows

    def postprocess(self, features: list[Feature], outputs: Any) -> list[ItemResult]:
        results = []
        for feature, logits in zip(features, outputs, strict=True):
            labels = list(feature.meta["labels"])
            scores = apply_score_function(np.asarray(logits, dtype=np.float32), "sigmoid" if self.siglip else "softmax")
            best = ranked(labels, scores)
            results.append(
                ItemResult(
                    item=feature.item,
                    label=best[0]["label"],
                    score=best[0]["score"],
                    output={"scores": best},
                    n_tokens=feature.length,
                )
            )
        return results

    def release(self) -> None:
        super().release()
        self.tokenizer = None
        self._text_embeds = None
