"""Oracle cases for ``image-text-to-text``: tiny LLaVA and Idefics3 models against ``pipeline("image-text-to-text")``.

LLaVA is a CLIP vision tower (32x32 images, 8-pixel patches: 16 image tokens) in front of a
2-layer Llama; Idefics3 (SmolVLM's architecture) splits each image into 32x32 tiles plus a
global view, so items carry different numbers of tiles. Both tokenizers are byte-level BPE with
an ``<image>`` token (and Idefics3's tile tokens), and a chat template that writes it for each
image part; the processor is saved beside the weights, so both Sluice and the pipeline load
everything with ``from_pretrained``. The oracle runs every item alone: the text from the pipeline
(``return_full_text=False``), the score from the same prompt through ``model.generate`` with
``output_scores`` (the pipeline returns none).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from sluice.families.generation import item_seed
from tests.models import OracleCase
from tests.models.common import training_texts
from tests.models.images import image_paths
from tests.models.text_generation import check, favour_eos, generate_alone

EOS, BOS, PAD, IMAGE = "<|endoftext|>", "<s>", "<pad>", "<image>"
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for p in m['content'] %}"
    "{% if p['type'] == 'image' %}<image>{% elif p['type'] == 'text' %}{{ p['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@cache
def build_tokenizer(extra: tuple[str, ...] = ()) -> Any:
    """Byte-level BPE with eos (0), bos (1, before every prompt), pad (2), the image token (3), then ``extra``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [EOS, BOS, PAD, IMAGE, *extra]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600 + len(extra), special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tok.train_from_iterator(training_texts(), trainer)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, bos_token=BOS, pad_token=PAD, model_max_length=512,
        model_input_names=["input_ids", "attention_mask"], extra_special_tokens=specials[3:],
    )  # fmt: skip


def llama_config(vocab_size: int) -> Any:
    """A 2-layer Llama (hidden 32) with eos 0, bos 1, pad 2 and wide initial weights."""
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512, bos_token_id=1,
                       eos_token_id=0, pad_token_id=2, initializer_range=0.2)  # fmt: skip


def save_vlm(model: Any, processor: Any, path: Path) -> Path:
    favour_eos(model, 0)
    model.generation_config.update(bos_token_id=1, eos_token_id=0, pad_token_id=2)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def build_llava(path: Path, seed: int = 0) -> Path:
    """LLaVA: CLIP vision (2 layers, 32x32, patch 8: 16 image tokens) + Llama, seeded weights."""
    import torch
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=16)  # fmt: skip
    config = LlavaConfig(vision_config=vision, text_config=llama_config(len(tokenizer)), image_token_index=3,
                         image_seq_length=16, vision_feature_layer=-1,
                         vision_feature_select_strategy="default")  # fmt: skip
    model = LlavaForConditionalGeneration(config).eval()
    # Default init makes the projected image features small next to the text; widen the projector
    # so that the images, not only the prompt text, decide what is generated.
    torch.nn.init.normal_(model.model.multi_modal_projector.linear_2.weight, std=1.0)
    images = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=8,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=CHAT_TEMPLATE)  # fmt: skip
    return save_vlm(model, processor, path)


def build_idefics3(path: Path, seed: int = 0) -> Path:
    """Idefics3 (SmolVLM's architecture): images split into 32x32 tiles (up to 96 px a side) plus a global one,
    each tile 16 patches shuffled into 4 image tokens, then Llama; seeded weights."""
    import torch
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
        Idefics3VisionConfig,
    )

    grid = tuple(f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6))
    tokenizer = build_tokenizer(("<fake_token_around_image>", "<end_of_utterance>", "<global-img>", *grid))
    torch.manual_seed(seed)
    vision = Idefics3VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                  image_size=32, patch_size=8)  # fmt: skip
    config = Idefics3Config(vision_config=vision, text_config=llama_config(len(tokenizer)), scale_factor=2,
                            image_token_id=3, pad_token_id=2)  # fmt: skip
    model = Idefics3ForConditionalGeneration(config).eval()
    torch.nn.init.normal_(model.model.connector.modality_projection.proj.weight, std=1.0)  # as LLaVA's projector
    images = Idefics3ImageProcessorPil(size={"longest_edge": 96}, max_image_size={"longest_edge": 32})
    processor = Idefics3Processor(image_processor=images, tokenizer=tokenizer, image_seq_len=4,
                                  chat_template=CHAT_TEMPLATE)  # fmt: skip
    return save_vlm(model, processor, path)


QUESTIONS = ["what is in this picture?", "describe the colours", "Is it a cat", "count the shapes here",
             "what does the left part show", "which image is brighter?"]  # fmt: skip


def vlm_inputs(n: int = 16) -> list[dict[str, Any]]:
    """Conversations over the test images (one or two images, or none), plus ``image`` + ``text`` items."""
    paths = image_paths()
    rows: list[dict[str, Any]] = []
    for i in range(n):
        question, image = QUESTIONS[i % len(QUESTIONS)], paths[(3 * i) % len(paths)]
        kind = i % 5
        if kind == 0:
            rows.append({"image": image, "text": question})
            continue
        content: list[dict[str, Any]] = [{"type": "image", "image": image}, {"type": "text", "text": question}]
        if kind == 2:  # two images, the second given by path
            content.insert(1, {"type": "image", "path": paths[(3 * i + 1) % len(paths)]})
        if kind == 3:  # text only
            content = [{"type": "text", "text": question}]
        messages = [{"role": "system", "content": "You answer briefly."}, {"role": "user", "content": content}]
        if kind == 4:  # the assistant's last message is continued
            messages.append({"role": "assistant", "content": [{"type": "text", "text": "It shows"}]})
        rows.append({"messages": messages})
    return rows


def as_messages(x: dict[str, Any]) -> list[dict[str, Any]]:
    """An item's conversation: ``image`` + ``text`` items are one user message, image first."""
    if "messages" in x:
        return list(x["messages"])
    parts = [{"type": "image", "image": x["image"]}] if x.get("image") else []
    return [{"role": "user", "content": [*parts, {"type": "text", "text": x["text"]}]}]


@cache
def _load(path: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    return AutoProcessor.from_pretrained(path), AutoModelForImageTextToText.from_pretrained(path).eval()


def pipeline_rows(path: Path, inputs: list[dict[str, Any]], params: dict[str, Any]) -> list[dict[str, Any]]:
    import torch
    from transformers import pipeline

    generator = pipeline("image-text-to-text", model=str(path), device="cpu")
    processor, model = _load(path)
    options = {k: v for k, v in params.items() if k != "seed"}
    options.setdefault("do_sample", False)
    rows = []
    for i, x in enumerate(inputs):
        messages = as_messages(x)
        seed = item_seed(params.get("seed", 0), i) if options["do_sample"] else None
        if seed is not None:
            torch.manual_seed(seed)
        text = generator(text=messages, return_full_text=False, generate_kwargs=options)[0]["generated_text"]
        cont = messages[-1]["role"] == "assistant"
        prompt = processor.apply_chat_template(messages, add_generation_prompt=not cont, continue_final_message=cont,
                                               tokenize=True, return_dict=True, return_tensors="pt")  # fmt: skip
        row = generate_alone(model, dict(prompt), {**options, "pad_token_id": 2}, seed)
        row["generated_text"] = processor.tokenizer.decode(row.pop("tokens"), skip_special_tokens=True)
        assert row["generated_text"] == text, (i, row, text)
        rows.append(row)
    return rows


CASES = [
    OracleCase("tiny-llava", "image-text-to-text", build_llava, vlm_inputs, pipeline_rows, check,
               params={"max_new_tokens": 10}),
    OracleCase("tiny-idefics3", "image-text-to-text", build_idefics3, vlm_inputs, pipeline_rows, check,
               params={"max_new_tokens": 8}),
    OracleCase("tiny-llava-sampled", "image-text-to-text", lambda p: build_llava(p, seed=1), lambda: vlm_inputs(12),
               pipeline_rows, check, params={"max_new_tokens": 8, "do_sample": True, "seed": 3, "top_k": 20}),
]  # fmt: skip
