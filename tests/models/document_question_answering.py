"""Oracle cases for ``document-question-answering``: a tiny LayoutLM and a tiny Donut against the pipeline.

LayoutLM reads words and boxes (given with every item here: the test machine has no Tesseract),
so its inputs are real documents' words laid out on a page, a few words to several windows' worth,
some with an image and some without. Donut reads the image: a 2-stage Donut Swin encoder and a
2-layer MBart decoder with a byte-level BPE tokenizer holding Donut's task tokens; its output
rows for ``</s_answer>`` and ``</s>`` are lengthened so that some answers close and some never do.
The oracle is ``pipeline("document-question-answering")`` item by item; Donut's score (the
pipeline gives none) is the mean log-probability of the same item's tokens from ``model.generate``.
"""

from __future__ import annotations

import random
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from tests.models import OracleCase
from tests.models.common import build_wordpiece, mixed_texts, save, training_texts
from tests.models.images import image_paths

TOL = 1e-4
DONUT_TOKENS = ["<s>", "</s>", "<pad>", "<unk>", "<s_docvqa>", "<s_question>", "</s_question>", "<s_answer>",
                "</s_answer>"]  # fmt: skip


def build_layoutlm(path: Path, seed: int = 0) -> Path:
    """A 2-layer LayoutLM span model with the WordPiece tokenizer (128 positions), seeded weights."""
    import torch
    from transformers import LayoutLMConfig, LayoutLMForQuestionAnswering

    torch.manual_seed(seed)
    config = LayoutLMConfig(vocab_size=600, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=128)  # fmt: skip
    model = LayoutLMForQuestionAnswering(config).eval()
    # Default init makes start/end logits nearly flat; a wider head makes span equality meaningful.
    torch.nn.init.normal_(model.qa_outputs.weight, std=1.0)
    return save(model, build_wordpiece(), path)


def layout(words: list[str], rng: random.Random) -> list[list[int]]:
    """Boxes (0-1000) for words set in lines of up to eight, a little jitter so no two pages match."""
    boxes = []
    for k, word in enumerate(words):
        x0 = 20 + (k % 8) * 120 + rng.randint(0, 10)
        y0 = (20 + (k // 8) * 25 + rng.randint(0, 4)) % 970
        boxes.append([x0, y0, min(x0 + 9 * min(len(word), 12), 1000), y0 + 18])
    return boxes


def layout_inputs(n: int = 20, seed: int = 3) -> list[dict[str, Any]]:
    """Questions over pages of 1 to ~300 words (several windows), with an image on most."""
    rng = random.Random(seed)
    docs, images = mixed_texts(n, seed=seed), image_paths()
    rows = []
    for i, doc in enumerate(docs):
        words = doc.split()[: rng.choice([1, 6, 25, 60, 300])] or ["empty"]
        source = rng.choice(docs).split() or ["nothing"]
        start = rng.randrange(len(source))
        row: dict[str, Any] = {"question": "what is the " + " ".join(source[start : start + rng.randint(1, 3)]),
                               "words": words, "boxes": layout(words, rng)}  # fmt: skip
        if i % 4 != 1:  # the model reads no pixels: a quarter of the items come without an image
            row["image"] = images[i % len(images)]
        rows.append(row)
    return rows


def layout_rows(path: Path, inputs: list[dict[str, Any]], params: dict[str, Any]) -> list[Any]:
    from transformers import pipeline

    pipe = pipeline("document-question-answering", model=str(path), device="cpu")
    rows = []
    for x in inputs:
        word_boxes = list(zip(x["words"], x["boxes"], strict=True))
        out = pipe(image=x.get("image"), question=x["question"], word_boxes=word_boxes, **params)
        rows.append(out if isinstance(out, list) else [out])
    return rows


def check_spans(expected: list[dict[str, Any]], actual: dict[str, Any]) -> None:
    assert actual["error"] is None, actual["error"]
    got = actual["output"]["answers"]
    assert [(a["answer"], a["start"], a["end"]) for a in got] == [(a["answer"], a["start"], a["end"]) for a in expected]
    assert [a["score"] for a in got] == pytest.approx([a["score"] for a in expected], abs=TOL)
    assert actual["label"] == expected[0]["answer"]
    assert actual["score"] == pytest.approx(expected[0]["score"], abs=TOL)


@cache
def donut_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=DONUT_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tok.train_from_iterator(training_texts(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", model_max_length=128,
                                   extra_special_tokens=DONUT_TOKENS[4:])  # fmt: skip


def build_donut(path: Path, seed: int = 0) -> Path:
    """Donut: Swin encoder (2 stages, 48x32 pages, patch 4) + MBart decoder (2 layers), seeded, wide init."""
    import torch
    from transformers import (
        DonutImageProcessorPil,
        DonutProcessor,
        DonutSwinConfig,
        MBartConfig,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
    )

    tokenizer = donut_tokenizer()
    torch.manual_seed(seed)
    encoder = DonutSwinConfig(image_size=[48, 32], patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2],
                              window_size=4, drop_path_rate=0.0, initializer_range=0.2)  # fmt: skip
    decoder = MBartConfig(vocab_size=len(tokenizer), d_model=32, decoder_layers=2, decoder_attention_heads=2,
                          decoder_ffn_dim=64, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
                          max_position_embeddings=128, is_decoder=True, add_cross_attention=True, pad_token_id=2,
                          bos_token_id=0, eos_token_id=1, decoder_start_token_id=0, forced_eos_token_id=None,
                          scale_embedding=True, init_std=0.2)  # fmt: skip
    config = VisionEncoderDecoderConfig(encoder=encoder, decoder=decoder, pad_token_id=2, eos_token_id=1,
                                        decoder_start_token_id=0)  # fmt: skip
    model = VisionEncoderDecoderModel(config=config).eval()
    with torch.no_grad():  # random weights seldom close an answer or stop: lengthen those rows
        weight = model.decoder.get_output_embeddings().weight
        weight[DONUT_TOKENS.index("</s_answer>")].mul_(1.8)
        weight[DONUT_TOKENS.index("</s>")].mul_(1.6)
    model.generation_config.update(pad_token_id=2, eos_token_id=1, decoder_start_token_id=0, max_new_tokens=10)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    DonutProcessor(image_processor=DonutImageProcessorPil(size={"height": 48, "width": 32}),
                   tokenizer=tokenizer).save_pretrained(path)  # fmt: skip
    return path


QUESTIONS = ["what is the total?", "Who signed it", "date of the invoice", "how many items are listed?", "name"]


def donut_inputs(n: int = 16) -> list[dict[str, Any]]:
    images = image_paths()
    return [{"image": images[(5 * i) % len(images)], "question": QUESTIONS[i % len(QUESTIONS)]} for i in range(n)]


def donut_rows(path: Path, inputs: list[dict[str, Any]], params: dict[str, Any]) -> list[Any]:
    import torch
    from transformers import AutoProcessor, VisionEncoderDecoderModel, pipeline
    from transformers.image_utils import load_image

    generate = {"max_new_tokens": params["max_new_tokens"]} if "max_new_tokens" in params else {}
    pipe = pipeline("document-question-answering", model=str(path), device="cpu", **generate)
    processor = AutoProcessor.from_pretrained(path)
    model = VisionEncoderDecoderModel.from_pretrained(path).eval()
    rows = []
    for x in inputs:
        (answer,) = pipe(image=x["image"], question=x["question"])
        pixels = processor.image_processor(images=load_image(x["image"]), return_tensors="pt")["pixel_values"]
        prompt = processor.tokenizer(f"<s_docvqa><s_question>{x['question']}</s_question><s_answer>",
                                     add_special_tokens=False, return_tensors="pt")["input_ids"]  # fmt: skip
        with torch.no_grad():
            out = model.generate(pixel_values=pixels, decoder_input_ids=prompt, output_scores=True,
                                 return_dict_in_generate=True, **generate)  # fmt: skip
        scores = model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)[0].tolist()
        tokens = out.sequences[0, prompt.shape[1] :].tolist()
        n = tokens.index(1) + 1 if 1 in tokens else len(tokens)
        rows.append({"answer": answer["answer"], "score": sum(scores[:n]) / n, "n_new_tokens": n,
                     "finish_reason": "eos" if 1 in tokens else "length"})  # fmt: skip
    return rows


def check_donut(expected: dict[str, Any], actual: dict[str, Any]) -> None:
    assert actual["error"] is None, actual["error"]
    assert actual["label"] == expected["answer"]
    assert actual["score"] == pytest.approx(expected["score"], abs=TOL)
    assert actual["output"]["answers"] == [{"answer": expected["answer"], "score": pytest.approx(actual["score"])}]
    assert actual["output"]["n_new_tokens"] == expected["n_new_tokens"]
    assert actual["output"]["finish_reason"] == expected["finish_reason"]


CASES = [
    OracleCase("tiny-layoutlm", "document-question-answering", build_layoutlm, layout_inputs, layout_rows,
               check_spans),
    OracleCase("tiny-layoutlm-top3", "document-question-answering", lambda p: build_layoutlm(p, seed=1),
               lambda: layout_inputs(16, seed=4), layout_rows, check_spans,
               params={"top_k": 3, "handle_impossible_answer": True, "max_answer_len": 4, "doc_stride": 16}),
    OracleCase("tiny-donut", "document-question-answering", build_donut, donut_inputs, donut_rows, check_donut,
               params={"max_new_tokens": 12}),
]  # fmt: skip
