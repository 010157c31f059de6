"""Oracle cases for ``image-to-text``: tiny GIT, BLIP and ViT-GPT2 captioners against the 4.x
``ImageToTextPipeline``, restated (transformers 5 sends ``image-to-text`` to ``image-text-to-text``,
which needs a prompt and fails on GIT's token type ids).

The oracle runs each image alone: the 4.x pipeline's inputs (GIT: ``[CLS] + prompt tokens``, or
no ``input_ids`` without a prompt; BLIP: the tokenizer's ``input_ids`` and ``attention_mask``;
ViT-GPT2: the pixels only), ``model.generate`` with ``output_scores`` (the pipeline also passed
the model's generation config, which here holds nothing ``generate`` would not use anyway), the
pipeline's text (the whole sequence decoded), and for the score ``compute_transition_scores``.
The new tokens are those after the prompt (BLIP returns its prompt less the ``[SEP]``), up to and
including the end token (BLIP stops at ``[SEP]``, whatever its config's ``eos_token_id``).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from sluice.families.generation import item_seed
from tests.models import OracleCase
from tests.models.common import build_wordpiece, save
from tests.models.images import image_inputs
from tests.models.text_generation import check  # a caption is checked as generated text

PROMPTS = (None, "a photo of", None, "a picture that shows the", "describe")
SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "initializer_range": 0.2}
VISION = {**SMALL, "num_hidden_layers": 1, "image_size": 32, "patch_size": 8}


def favour(output_layer: Any, token: int, boost: float) -> None:
    """Random weights rarely end a sequence; a longer end-token row makes some captions stop early."""
    import torch

    with torch.no_grad():
        output_layer.weight[token].mul_(boost)


def build_git(path: Path, seed: int = 0, boost: float = 1.5) -> Path:
    """GIT: a 1-layer CLIP vision tower on 32x32 images, a 2-layer text decoder, BERT WordPiece tokenizer."""
    import torch
    from transformers import CLIPImageProcessorPil, GitConfig, GitForCausalLM, GitProcessor

    tokenizer = build_wordpiece()
    torch.manual_seed(seed)
    config = GitConfig(vision_config=VISION, vocab_size=len(tokenizer), num_hidden_layers=2, max_position_embeddings=64,
                       bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
                       pad_token_id=tokenizer.pad_token_id, **SMALL)  # fmt: skip
    model = GitForCausalLM(config).eval()
    favour(model.get_output_embeddings(), tokenizer.sep_token_id, boost)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    save(model, tokenizer, path)
    GitProcessor(image_processor, tokenizer).save_pretrained(path)
    return path


@cache
def blip_tokenizer() -> Any:
    """BERT WordPiece plus BLIP's decoder-start token ``[DEC]`` as bos (a special token, so decoding drops it)."""
    tokenizer = build_wordpiece()
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    return tokenizer


def build_blip(path: Path, model_class: str = "BlipForConditionalGeneration", seed: int = 0,
               boost: float = 2.5) -> Path:  # fmt: skip
    """BLIP with a 1-layer vision tower and 2-layer text towers; its config's ``eos_token_id`` is not
    ``[SEP]``, as in the real checkpoints, so the test sees that generation still stops at ``[SEP]``."""
    import torch
    import transformers
    from transformers import BlipConfig, BlipImageProcessorPil, BlipProcessor

    tokenizer = blip_tokenizer()
    torch.manual_seed(seed)
    text = {**SMALL, "vocab_size": len(tokenizer), "num_hidden_layers": 2, "max_position_embeddings": 64,
            "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.unk_token_id,
            "sep_token_id": tokenizer.sep_token_id, "pad_token_id": tokenizer.pad_token_id}  # fmt: skip
    config = BlipConfig(text_config=text, vision_config=VISION, projection_dim=32)
    model = getattr(transformers, model_class)(config).eval()
    favour(model.text_decoder.get_output_embeddings(), tokenizer.sep_token_id, boost)
    save(model, tokenizer, path)
    BlipProcessor(BlipImageProcessorPil(size={"height": 32, "width": 32}), tokenizer).save_pretrained(path)
    return path


def build_vit_gpt2(path: Path, seed: int = 0) -> Path:
    """A vision-encoder-decoder captioner: a 1-layer ViT encoder, a 2-layer GPT-2 decoder with cross-attention,
    byte-level BPE whose end-of-text token also starts and pads (as nlpconnect/vit-gpt2-image-captioning)."""
    import torch
    from transformers import GPT2Config, ViTConfig, ViTImageProcessorPil
    from transformers import VisionEncoderDecoderConfig as Config
    from transformers import VisionEncoderDecoderModel as Model

    from tests.models.text_generation import _bpe

    tokenizer = _bpe(None, None)
    torch.manual_seed(seed)
    encoder = ViTConfig(**VISION)
    decoder = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=64, bos_token_id=0,
                         eos_token_id=0, initializer_range=0.2, add_cross_attention=True, is_decoder=True)  # fmt: skip
    config = Config.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id = config.pad_token_id = config.eos_token_id = 0
    model = Model(config=config).eval()
    favour(model.get_output_embeddings(), 0, 1.8)
    save(model, tokenizer, path)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(path)  # no processor config: saved apart
    return path


@cache
def load(path: Path) -> tuple[Any, Any, Any]:
    """Image processor, tokenizer and model, each loaded on its own as the 4.x pipeline did."""
    import transformers

    model = transformers.AutoModelForImageTextToText.from_pretrained(path).eval()
    image_processor = transformers.AutoImageProcessor.from_pretrained(path)
    return image_processor, transformers.AutoTokenizer.from_pretrained(path), model


def generate_alone(model: Any, inputs: dict[str, Any], options: dict[str, Any], seed: int | None,
                   start: int, eos: int) -> dict[str, Any]:  # fmt: skip
    """One input through ``model.generate``: new tokens (from ``start``), finish, mean transition log-probability."""
    import torch

    if seed is not None:
        torch.manual_seed(seed)
    out = model.generate(**inputs, **options, output_scores=True, return_dict_in_generate=True)
    beams = options.get("num_beams", 1) > 1
    scores = model.compute_transition_scores(out.sequences, out.scores, getattr(out, "beam_indices", None),
                                             normalize_logits=not beams)[0].tolist()  # fmt: skip
    tokens = out.sequences[0, start:].tolist()
    n = tokens.index(eos) + 1 if eos in tokens else len(tokens)
    return {"tokens": tokens[:n], "n_new_tokens": n, "finish_reason": "eos" if eos in tokens else "length",
            "score": sum(scores[:n]) / n, "sequence": out.sequences[0].tolist()}  # fmt: skip


def caption_alone(path: Path, image: str, prompt: str | None, options: dict[str, Any],
                  seed: int | None) -> dict[str, Any]:  # fmt: skip
    """The 4.x ``ImageToTextPipeline`` on one image (and prompt), with the new text decoded on its own."""
    import torch
    from transformers.image_utils import load_image

    image_processor, tokenizer, model = load(path)
    inputs: dict[str, Any] = image_processor(images=load_image(image), return_tensors="pt")
    kind = model.config.model_type
    if kind == "vision-encoder-decoder":
        start, eos = 1, model.generation_config.eos_token_id
    elif kind == "git":
        if prompt is not None:
            ids = [tokenizer.cls_token_id, *tokenizer(prompt, add_special_tokens=False)["input_ids"]]
            inputs["input_ids"] = torch.tensor([ids])
        start, eos = (1 if prompt is None else inputs["input_ids"].shape[1]), model.generation_config.eos_token_id
    else:  # blip
        if prompt is not None:
            text = tokenizer(prompt, return_tensors="pt")
            inputs.update(input_ids=text["input_ids"], attention_mask=text["attention_mask"])
        start, eos = (1 if prompt is None else inputs["input_ids"].shape[1] - 1), model.config.text_config.sep_token_id
    row = generate_alone(model, dict(inputs), options, seed, start, eos)
    full = tokenizer.decode(row.pop("sequence"), skip_special_tokens=True)  # what the 4.x pipeline returned
    row["generated_text"] = tokenizer.decode(row.pop("tokens"), skip_special_tokens=True)
    if prompt is None:
        assert full == row["generated_text"]
    return row


def oracle_rows(path: Path, inputs: list[dict[str, Any]], params: dict[str, Any]) -> list[dict[str, Any]]:
    options = {k: v for k, v in params.items() if k != "seed"}
    rows = []
    for i, x in enumerate(inputs):
        seed = item_seed(params.get("seed", 0), i) if options.get("do_sample") else None
        rows.append(caption_alone(path, x["image"], x.get("text"), options, seed))
    return rows


def prompted(n: int) -> list[dict[str, Any]]:
    """The test images, with no prompt or prompts of several lengths in turn."""
    out = []
    for i, x in enumerate(image_inputs()[:n]):
        prompt = PROMPTS[i % len(PROMPTS)]
        out.append(x if prompt is None else {**x, "text": prompt})
    return out


CASES = [
    OracleCase("tiny-git-captioner", "image-to-text", build_git, lambda: prompted(24), oracle_rows, check,
               params={"max_new_tokens": 12}),
    OracleCase("tiny-git-captioner-sampled", "image-to-text", lambda p: build_git(p, boost=2.0), lambda: prompted(16),
               oracle_rows, check,
               params={"max_new_tokens": 10, "do_sample": True, "seed": 5, "top_k": 20, "temperature": 0.9}),
    OracleCase("tiny-blip-captioner", "image-to-text", build_blip, lambda: prompted(20), oracle_rows, check,
               params={"max_new_tokens": 10, "num_beams": 3, "no_repeat_ngram_size": 2}),
    OracleCase("tiny-vit-gpt2-captioner", "image-to-text", build_vit_gpt2, lambda: image_inputs()[:16], oracle_rows,
               check, params={"max_new_tokens": 8, "repetition_penalty": 1.3}),
]  # fmt: skip
