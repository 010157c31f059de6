"""``text-to-speech``: submit-time checks, the WAV artifact, per-item seeds, and why items run alone.

The waveforms themselves are checked against ``pipeline("text-to-audio")`` by the oracle cases
(``tests/models/text_to_speech.py``).
"""

from __future__ import annotations

import io
import shutil
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from producer.validate import check_item
from sluice.errors import ConfigError, ValidationError
from sluice.families import family_for
from sluice.families.text_to_speech import TextToAudio, TextToSpeech, read_wav, wav_bytes
from sluice.registry import ModelSpec
from sluice.settings import Settings
from tests.models.text_to_speech import BARK_MAX_TEXT, SPEAKER_DIM, build_bark, build_speecht5, build_vits
from worker.engine import Engine


@pytest.fixture(scope="module")
def vits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_vits(tmp_path_factory.mktemp("models") / "tiny-vits")


@pytest.fixture(scope="module")
def speecht5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_speecht5(tmp_path_factory.mktemp("models") / "tiny-speecht5")


@pytest.fixture(scope="module")
def bark(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_bark(tmp_path_factory.mktemp("models") / "tiny-bark")


def loaded(path: Path, **options: Any) -> TextToSpeech:
    family = TextToSpeech(ModelSpec(name="tts", task="text-to-speech", path=str(path), options=options), "cpu")
    family.setup()
    return family


def run(family: TextToSpeech, items: list[tuple[int, dict[str, Any]]], max_size: int = 8) -> dict[int, Any]:
    rows = {}
    for results, _ in Engine(family, 4096, max_size).run(items):
        for r in results:
            rows[r.item] = r
    return rows


def problem(fields: dict[str, Any], path: str = "/nowhere", **options: Any) -> str | None:
    spec = ModelSpec(name="tts", task="text-to-speech", path=path, options=options)
    return check_item(TextToSpeech, spec, {}, fields, 2, Settings())


def test_registered_under_both_names() -> None:
    assert family_for("text-to-speech") is TextToSpeech
    assert family_for("text-to-audio") is TextToAudio


def test_submit_checks(speecht5: Path) -> None:
    assert problem({"text": "hello", "seed": 3}) is None
    assert problem({"text": 5}) == "item 2: field 'text' must be a string, got int"
    assert (problem({"text": "x", "seed": -1}) or "").startswith("item 2: 'seed' must be in [0, 4294967295]")
    assert "must be a list of 1 to 8192 finite numbers" in (problem({"text": "x", "speaker_embedding": [1, "a"]}) or "")
    # SpeechT5 needs a speaker: the item's, or one registered with the model.
    message = problem({"text": "x"}, str(speecht5))
    assert message is not None and "speaks with a speaker embedding" in message
    assert problem({"text": "x", "speaker_embedding": [0.1] * SPEAKER_DIM}, str(speecht5)) is None
    assert problem({"text": "x"}, str(speecht5), speaker_embedding="speaker.npy") is None
    musicgen = speecht5.parent / "musicgen"
    musicgen.mkdir(exist_ok=True)
    (musicgen / "config.json").write_text('{"model_type": "musicgen"}')
    assert "is a musicgen model; text-to-speech runs VITS / MMS-TTS, SpeechT5 and Bark" in (
        problem({"text": "x"}, str(musicgen)) or ""
    )
    with pytest.raises(ValidationError, match="unknown option"):
        TextToSpeech.validate_params({"voice": "x"}, ModelSpec(name="tts", task="text-to-speech", path="/nowhere"))


def test_wav_is_16_bit_mono_pcm_at_the_models_rate() -> None:
    waveform = np.array([0.0, 0.5, -0.5, 1.0, -1.0, 2.0, -3.0], dtype=np.float32)
    data = wav_bytes(waveform, 22050)
    with wave.open(io.BytesIO(data), "rb") as source:
        assert (source.getnchannels(), source.getsampwidth(), source.getframerate()) == (1, 2, 22050)
        assert source.getnframes() == 7
    back, rate = read_wav(data)
    assert rate == 22050
    assert np.allclose(back, np.clip(waveform, -1, 1), atol=1 / 32767)


def test_each_item_has_its_own_seed_and_batches_change_nothing(vits: Path) -> None:
    family = loaded(vits)
    items = [(i, {"text": text, "seed": 9}) for i, text in enumerate(["hello", "hello", "a longer sentence here"])]
    together, alone = run(family, items), run(family, items, max_size=1)
    for i, _ in items:
        assert together[i].artifacts == alone[i].artifacts
        assert together[i].output == alone[i].output
    # The same text as two items gets two voices (seeds 9 and 10); the WAV and output agree.
    assert together[0].artifacts != together[1].artifacts
    waveform, rate = read_wav(together[2].artifacts[0].data)
    assert together[2].output == {"sampling_rate": rate, "n_samples": waveform.shape[0],
                                  "duration_s": round(waveform.shape[0] / rate, 6)}  # fmt: skip


def test_padded_vits_batches_change_short_clips_even_without_noise(vits: Path) -> None:
    """Why items run alone: with both noise scales at 0 (deterministic), a clip padded in a batch
    still comes out different near its end (measured: up to 0.7 of full scale), the longest one not."""
    import torch

    family = loaded(vits)
    model, tokenizer = family.model, family.tokenizer
    model.noise_scale = model.noise_scale_duration = 0.0
    texts = ["hello there", "a much longer sentence that pads the other one"]
    with torch.inference_mode():
        alone = [model(**tokenizer(t, return_tensors="pt")).waveform[0].numpy() for t in texts]
        batched = model(**tokenizer(texts, return_tensors="pt", padding=True))
    short = batched.waveform[0, : int(batched.sequence_lengths[0])].numpy()
    longest = batched.waveform[1, : int(batched.sequence_lengths[1])].numpy()
    assert short.shape == alone[0].shape and longest.shape == alone[1].shape
    assert np.abs(longest - alone[1]).max() < 1e-4
    assert np.abs(short[:200] - alone[0][:200]).max() < 1e-4  # the head is the same ...
    assert np.abs(short[-500:] - alone[0][-500:]).max() > 0.01  # ... the tail is not


def test_speecht5_speaks_with_the_items_or_the_registered_speaker(speecht5: Path) -> None:
    family = loaded(speecht5, vocoder="vocoder", speaker_embedding="speaker.npy")
    assert family.sampling_rate == 16000 and family.speaker is not None and len(family.speaker) == SPEAKER_DIM
    rows = run(family, [(0, {"text": "hello"}), (1, {"text": "hello", "speaker_embedding": [0.5] * SPEAKER_DIM}),
                        (2, {"text": "hello", "speaker_embedding": [0.5] * 3})])  # fmt: skip
    assert rows[0].error is None and rows[1].error is None
    assert rows[0].artifacts != rows[1].artifacts
    assert rows[2].error == f"speaker_embedding must hold {SPEAKER_DIM} floats for this model, got 3 floats"


def test_speecht5_never_downloads_its_vocoder(speecht5: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs its HiFi-GAN vocoder as a local directory"):
        loaded(speecht5)
    copy = shutil.copytree(speecht5, tmp_path / "no-vocoder", ignore=shutil.ignore_patterns("vocoder"))
    with pytest.raises(ConfigError, match="microsoft/speecht5_hifigan"):
        loaded(copy, vocoder="microsoft/speecht5_hifigan")


def test_bark_is_accepted_at_submit(bark: Path) -> None:
    assert problem({"text": "hello", "seed": 3}, str(bark)) is None
    # Bark needs no speaker embedding (its voice presets are not supported).
    assert problem({"text": "hello"}, str(bark)) is None


def test_bark_items_keep_their_voice_whatever_their_batch_mates(bark: Path) -> None:
    family = loaded(bark)
    assert family.sampling_rate == 24000 and family.max_tokens == BARK_MAX_TEXT
    texts = ["hello there", "a rather longer sentence to speak", "hello there"]
    items = [(i, {"text": text, "seed": 5}) for i, text in enumerate(texts)]
    together, alone = run(family, items), run(family, items, max_size=1)
    # Item 2 again, beside other batch-mates (other texts, other seeds).
    others = run(family, [(2, {"text": "hello there", "seed": 5}), (0, {"text": "zzz", "seed": 1}),
                          (1, {"text": "bye", "seed": 8})])  # fmt: skip
    for i, _ in items:
        assert together[i].error is None and together[i].artifacts == alone[i].artifacts
        assert together[i].output == alone[i].output
    assert others[2].artifacts == together[2].artifacts
    # The same text as items 0 and 2 speaks with seeds 5 and 7: two clips.
    assert together[0].artifacts != together[2].artifacts
    waveform, rate = read_wav(together[1].artifacts[0].data)
    assert rate == 24000 and waveform.shape[0] % 32 == 0  # whole EnCodec frames of 32 samples
    assert together[1].output == {"sampling_rate": rate, "n_samples": waveform.shape[0],
                                  "duration_s": round(waveform.shape[0] / rate, 6)}  # fmt: skip


def test_bark_seeds_change_the_clip_and_long_texts_are_refused(bark: Path) -> None:
    family = loaded(bark)
    one, two, again = (run(family, [(0, {"text": "hello there", "seed": seed})])[0] for seed in (1, 2, 1))
    assert one.artifacts == again.artifacts and one.artifacts != two.artifacts
    first, second = (read_wav(row.artifacts[0].data)[0] for row in (one, two))
    if first.shape == second.shape:  # the same length: the samples differ
        assert float(np.abs(first - second).max()) > 0.01
    # The semantic model reads BARK_MAX_TEXT tokens and would drop the rest: such a text fails alone.
    text = "word " * 40
    n = len(family.tokenizer(text, add_special_tokens=False)["input_ids"])
    long = run(family, [(0, {"text": text}), (1, {"text": "ok"})])
    assert long[0].error == f"the text is {n} tokens, over the model's {BARK_MAX_TEXT}; split it"
    assert long[1].error is None
