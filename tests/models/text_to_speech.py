"""Oracle cases for ``text-to-speech``: tiny VITS, SpeechT5 (+ HiFi-GAN) and Bark against ``pipeline("text-to-audio")``.

Each item alone through the pipeline after ``torch.manual_seed(seed + item)``; Sluice's WAV
artifact, read back, must equal the pipeline's waveform (clipped to [-1, 1]) within 1e-4 (16-bit
PCM rounds to 1.5e-5), with the same sampling rate and length.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sluice.families.generation import item_seed
from sluice.families.text_to_speech import read_wav
from tests.models import OracleCase
from tests.models.common import build_wordpiece, mixed_texts, save

TOL = 1e-4
CHARS = ["<pad>", "<unk>", *" abcdefghijklmnopqrstuvwxyz'.,?!-"]
SPEAKER_DIM = 8


def build_vits(path: Path, seed: int = 0) -> Path:
    """A VITS (MMS-TTS style: characters, no phonemizer) with a few channels per layer."""
    import torch
    from transformers import VitsConfig, VitsModel, VitsTokenizer

    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.json").write_text(json.dumps({c: i for i, c in enumerate(CHARS)}), encoding="utf-8")
    tokenizer = VitsTokenizer(str(path / "vocab.json"), phonemize=False, add_blank=True, normalize=True)
    torch.manual_seed(seed)
    config = VitsConfig(vocab_size=len(CHARS), hidden_size=16, num_hidden_layers=2, num_attention_heads=2, ffn_dim=32,
                        flow_size=16, spectrogram_bins=8, duration_predictor_num_flows=2,
                        duration_predictor_filter_channels=16, prior_encoder_num_flows=2,
                        prior_encoder_num_wavenet_layers=2, posterior_encoder_num_wavenet_layers=2,
                        upsample_initial_channel=16, upsample_rates=[8, 2], upsample_kernel_sizes=[16, 4],
                        resblock_kernel_sizes=[3, 7], resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]],
                        sampling_rate=16000, pad_token_id=0)  # fmt: skip
    model = VitsModel(config).eval()
    with torch.no_grad():  # random weights saturate the output (tanh); a quieter last layer keeps it in range
        model.decoder.conv_post.weight.mul_(0.1)
    return save(model, tokenizer, path)


def build_speecht5(path: Path, seed: int = 0) -> Path:
    """SpeechT5 for TTS with its vocoder (``vocoder/``) and a default speaker (``speaker.npy``) inside."""
    import torch
    from transformers import SpeechT5Config, SpeechT5ForTextToSpeech, SpeechT5HifiGan, SpeechT5HifiGanConfig

    torch.manual_seed(seed)
    config = SpeechT5Config(vocab_size=600, hidden_size=24, encoder_layers=2, decoder_layers=2,
                            encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                            decoder_ffn_dim=32, speech_decoder_prenet_units=16, speech_decoder_postnet_units=16,
                            speech_decoder_postnet_layers=2, num_mel_bins=8, speaker_embedding_dim=SPEAKER_DIM,
                            max_text_positions=128, max_speech_positions=1200, pad_token_id=0, bos_token_id=2,
                            eos_token_id=3, decoder_start_token_id=2)  # fmt: skip
    model = SpeechT5ForTextToSpeech(config).eval()
    with torch.no_grad():  # random weights stop at once; these stop after a varying number of frames
        model.speech_decoder_postnet.prob_out.weight.mul_(20.0)
        model.speech_decoder_postnet.prob_out.bias.fill_(-6.0)
    save(model, build_wordpiece(), path)
    vocoder = SpeechT5HifiGan(SpeechT5HifiGanConfig(model_in_dim=8, upsample_initial_channel=16, upsample_rates=[4, 4],
                                                    upsample_kernel_sizes=[8, 8], resblock_kernel_sizes=[3],
                                                    resblock_dilation_sizes=[[1, 3]], sampling_rate=16000,
                                                    initializer_range=0.25))  # fmt: skip
    vocoder.eval().save_pretrained(path / "vocoder")
    np.save(path / "speaker.npy", np.random.default_rng(seed).normal(size=SPEAKER_DIM).astype(np.float32))
    return path


# Bark's token layout, shrunk: semantic tokens [0, S) with S the end; text tokens after TEXT_OFFSET
# (+ the text pad and the "infer" token); coarse tokens S + codebook * C + code; fine codes [0, C).
BARK_S, BARK_C, BARK_TEXT_OFFSET, BARK_TEXT = 32, 16, 40, 600
BARK_MAX_TEXT = 32  # max_input_semantic_length: text tokens the semantic model reads


def _bark_generation_config() -> dict[str, Any]:
    """``generation_config.json`` of the tiny Bark: every stage short (16 semantic tokens at most,
    coarse windows of 16, fine windows of 32), semantic and coarse sampled, fine at temperature 0.5."""
    from transformers.models.bark.generation_configuration_bark import BarkGenerationConfig

    s, c, text_pad = BARK_S, BARK_C, BARK_TEXT_OFFSET + BARK_TEXT
    config = BarkGenerationConfig(
        semantic_config=dict(eos_token_id=s, max_new_tokens=16, min_new_tokens=4, do_sample=True,
                             text_encoding_offset=BARK_TEXT_OFFSET, text_pad_token=text_pad,
                             semantic_infer_token=text_pad + 1, semantic_vocab_size=s,
                             max_input_semantic_length=BARK_MAX_TEXT),
        coarse_acoustics_config=dict(do_sample=True, coarse_semantic_pad_token=s + 2 * c,
                                     coarse_infer_token=s + 2 * c + 1, max_coarse_input_length=16,
                                     max_coarse_history=32, sliding_window_len=16, n_coarse_codebooks=2),
        fine_acoustics_config=dict(temperature=0.5, max_fine_history_length=16, max_fine_input_length=32,
                                   n_fine_codebooks=4),
        sample_rate=24000, codebook_size=c,
    )  # fmt: skip
    return dict(config.to_dict())


def build_bark(path: Path, seed: int = 0) -> Path:
    """A Bark (``BarkModel``): three 2-layer GPTs of width 16 and an EnCodec with 4 codebooks of 16
    codes, a WordPiece tokenizer saved by a ``BarkProcessor``; a clip takes a few hundredths of a second."""
    import torch
    from transformers import (
        BarkCoarseConfig,
        BarkConfig,
        BarkFineConfig,
        BarkModel,
        BarkProcessor,
        BarkSemanticConfig,
        EncodecConfig,
    )

    s, c, small = BARK_S, BARK_C, dict(hidden_size=16, num_layers=2, num_heads=2)
    torch.manual_seed(seed)
    config = BarkConfig(
        semantic_config=BarkSemanticConfig(input_vocab_size=BARK_TEXT_OFFSET + BARK_TEXT + 8, output_vocab_size=s + 8,
                                           block_size=64, **small).to_dict(),
        coarse_acoustics_config=BarkCoarseConfig(input_vocab_size=s + 2 * c + 8, output_vocab_size=s + 2 * c,
                                                 block_size=96, **small).to_dict(),
        fine_acoustics_config=BarkFineConfig(input_vocab_size=c + 1, output_vocab_size=c + 1, block_size=32,
                                             n_codes_total=4, n_codes_given=1, **small).to_dict(),
        # 4 codebooks: 1000 * 12 kbps // (750 frames/s * 4 bits); a frame is 32 samples at 24 kHz
        codec_config=EncodecConfig(target_bandwidths=[12.0], sampling_rate=24000, hidden_size=16, num_filters=4,
                                   upsampling_ratios=[8, 4], codebook_size=c, num_lstm_layers=1, kernel_size=3,
                                   last_kernel_size=3).to_dict(),
    )  # fmt: skip
    model = BarkModel(config).eval()
    with torch.no_grad():
        for layer in model.codec_model.quantizer.layers:  # EnCodec initialises its codebooks to zeros: all codes alike
            layer.codebook.embed.normal_()
        model.semantic.lm_head.weight.mul_(10.0)  # sharper semantic draws, so seeds matter ...
        model.semantic.lm_head.weight[s].mul_(3.0)  # ... and clips end after a varying number of tokens
        model.codec_model.decoder.layers[-1].conv.parametrizations.weight.original0.mul_(5.0)  # louder, within [-1, 1]
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    # BarkGenerationConfig.save_pretrained fails in transformers 5 (it skips GenerationConfig's
    # __init__); its dict is what a Bark checkpoint's generation_config.json holds.
    (path / "generation_config.json").write_text(json.dumps(_bark_generation_config(), indent=2), encoding="utf-8")
    BarkProcessor(build_wordpiece()).save_pretrained(path)
    return path


def _inputs(n: int, seed: int, speakers: bool = False) -> list[dict[str, Any]]:
    texts = [t[:48] or "ok" for t in mixed_texts(n, seed=seed)]
    rng = np.random.default_rng(seed)
    return [
        {"text": t, **({"speaker_embedding": rng.normal(size=SPEAKER_DIM).round(4).tolist()} if speakers and i % 2
                       else {})}
        for i, t in enumerate(texts)
    ]  # fmt: skip


def pipeline_rows(path: Path, inputs: list[dict[str, Any]], params: dict[str, Any]) -> list[dict[str, Any]]:
    """``pipeline("text-to-audio")`` per item, seeded as Sluice seeds it."""
    import torch
    from transformers import SpeechT5HifiGan, pipeline

    speecht5 = (path / "vocoder").is_dir()
    extra = {"vocoder": SpeechT5HifiGan.from_pretrained(path / "vocoder")} if speecht5 else {}
    speak = pipeline("text-to-audio", model=str(path), device="cpu", **extra)
    default = np.load(path / "speaker.npy").tolist() if speecht5 else None
    rows = []
    for i, x in enumerate(inputs):
        forward = {}
        if speecht5:
            forward = {"forward_params": {"speaker_embeddings": torch.tensor([x.get("speaker_embedding", default)])}}
        torch.manual_seed(item_seed(params.get("seed", 0), i))
        out = speak(x["text"], **forward)
        rows.append({"audio": np.clip(np.asarray(out["audio"], dtype=np.float32).reshape(-1), -1, 1),
                     "sampling_rate": out["sampling_rate"]})  # fmt: skip
    return rows


def wav_of(actual: dict[str, Any]) -> bytes:
    """The one WAV artifact of a stored row: ``(media_type, name, data)`` in-process, a dict from the ledger."""
    artifacts = actual.get("artifacts")
    assert artifacts, "no artifacts on the row: the WAV is stored as an artifact (ledger artifact storage needed)"
    (artifact,) = artifacts
    media_type, data = (artifact[0], artifact[2]) if isinstance(artifact, tuple | list) else (
        artifact["media_type"], artifact["data"])  # fmt: skip
    assert media_type == "audio/wav"
    return bytes(data)


def check(expected: dict[str, Any], actual: dict[str, Any]) -> None:
    assert actual["error"] is None, actual["error"]
    assert actual["label"] is None and actual["score"] is None
    audio = expected["audio"]
    output = actual["output"]
    assert output["sampling_rate"] == expected["sampling_rate"]
    assert output["n_samples"] == audio.shape[0]
    assert output["duration_s"] == pytest.approx(audio.shape[0] / expected["sampling_rate"], abs=1e-6)
    waveform, rate = read_wav(wav_of(actual))
    assert rate == expected["sampling_rate"] and waveform.shape == audio.shape
    assert float(np.abs(waveform - audio).max()) <= TOL


CASES = [
    OracleCase("tiny-vits", "text-to-speech", build_vits, lambda: _inputs(6, 21), pipeline_rows, check,
               params={"seed": 4}),
    OracleCase("tiny-speecht5", "text-to-audio", build_speecht5, lambda: _inputs(6, 22, speakers=True),
               pipeline_rows, check, registry={"vocoder": "vocoder", "speaker_embedding": "speaker.npy"}),
    OracleCase("tiny-bark", "text-to-speech", build_bark, lambda: _inputs(4, 23), pipeline_rows, check,
               params={"seed": 11}),
]  # fmt: skip
