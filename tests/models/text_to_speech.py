"""Oracle cases for ``text-to-speech``: tiny VITS and SpeechT5 (+ HiFi-GAN) against ``pipeline("text-to-audio")``.

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
]  # fmt: skip
