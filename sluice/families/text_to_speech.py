"""``text-to-speech`` (alias ``text-to-audio``): speech for each item's ``text``, stored as a WAV file.

Models: VITS / MMS-TTS (``VitsModel``, any ``AutoModelForTextToWaveform`` that returns a
``waveform``), Bark (``BarkModel``; what is Bark's own is in :mod:`sluice.families.bark_speech`),
and SpeechT5 (``SpeechT5ForTextToSpeech``) with the HiFi-GAN vocoder (``SpeechT5HifiGan``) that
the registry entry names as a local directory (``vocoder = "DIR"``, resolved like ``path``, or
relative to the model directory; it is never downloaded), loaded once with the model. SpeechT5
speaks with a speaker embedding (an x-vector): the item's ``speaker_embedding`` (a list of
floats), else the entry's ``speaker_embedding`` file (``.npy``, read without pickle, or a
``.json`` list; found like ``vocoder``).

Each item's result is one artifact, ``Artifact("audio/wav", ...)``: mono 16-bit PCM at the
model's sampling rate (the vocoder's for SpeechT5), the waveform clipped to [-1, 1] and scaled by
32767, written with the standard library's ``wave``; ``output`` holds ``sampling_rate``,
``n_samples`` and ``duration_s``.

**Randomness and batches.** All three models sample: VITS draws noise for its duration predictor
and its prior (``noise_scale``), SpeechT5 applies dropout in its decoder pre-net at inference, and
Bark samples its semantic and coarse tokens where its generation config sets ``do_sample`` (and
its fine codes at a fine ``temperature`` other than 1). The noise is drawn for the whole padded
batch, so a row's voice would depend on its batch-mates (and VITS's padded rows change length and
tail even with the noise scales at 0: measured, see the README; a Bark batch generates until its
longest row ends). So every item runs alone (its padding between items removed; Bark's padding to
its processor's ``max_length`` kept) with the global generator seeded by its own seed,
``seed + item`` (job ``seed``, default 0), inside ``torch.random.fork_rng``: the same waveform as
``torch.manual_seed(seed + item)`` then ``pipeline("text-to-audio")`` on that text.
"""

from __future__ import annotations

import io
import json
import math
import wave
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from sluice.errors import ConfigError, ItemError, ValidationError
from sluice.families import bark_speech
from sluice.families.base import Artifact, Feature, ItemResult, TaskFamily
from sluice.families.common import text_field
from sluice.families.generation_options import RULES, item_seed
from sluice.registry import ModelSpec
from sluice.settings import Settings

#: most floats an item's speaker embedding may hold (SpeechT5's x-vectors have 512)
MAX_EMBEDDING = 8192
#: the ``model_type`` values this family can run (MusicGen, SeamlessM4T, ... generate differently)
SUPPORTED = ("vits", "speecht5", "bark")
#: what the refusal of another model type says the family runs
RUNS = "VITS / MMS-TTS, SpeechT5 and Bark"


class TextToSpeech(TaskFamily):
    task = "text-to-speech"
    #: item fields / job params besides ``text``
    options: ClassVar[tuple[str, ...]] = ("seed", "speaker_embedding")

    tokenizer: Any
    model: Any
    vocoder: Any
    speaker: Any
    sampling_rate: int
    max_tokens: int | None
    #: the model's ``model_type`` (None: not read from its config.json)
    kind: str | None
    #: tokenizer arguments besides the texts (Bark's are the pipeline's; none for the others)
    encode_kwargs: dict[str, Any]

    # submit time -------------------------------------------------------------------------
    @classmethod
    def validate_params(cls, params: dict[str, Any], spec: ModelSpec) -> None:
        unknown = sorted(set(params) - set(cls.options))
        if unknown:
            raise ValidationError(f"job params: unknown option(s) {', '.join(map(repr, unknown))} for {cls.task}; "
                                  f"accepted: {', '.join(cls.options)}")  # fmt: skip
        _check_options(params, "job params")

    @classmethod
    def validate_item(cls, fields: dict[str, Any], item: int, spec: ModelSpec, settings: Settings) -> None:
        text_field(fields, "text", item)
        _check_options(fields, f"item {item}")
        kind = model_type(spec.path)
        if kind is not None and kind not in SUPPORTED:
            raise ValidationError(f"item {item}: model {spec.name!r} is a {kind} model; {cls.task} runs {RUNS}")
        needs_speaker = model_type(spec.path) == "speecht5" and "speaker_embedding" not in spec.options
        if needs_speaker and fields.get("speaker_embedding") is None:
            raise ValidationError(
                f"item {item}: model {spec.name!r} (SpeechT5) speaks with a speaker embedding: give "
                "'speaker_embedding' (a list of floats), or register one with speaker_embedding = \"FILE\""
            )

    # run time ----------------------------------------------------------------------------
    def setup(self) -> None:
        import transformers
        from transformers import AutoTokenizer

        from sluice.families.hf import torch_dtype

        transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        remote = self.spec.trust_remote_code
        dtype = torch_dtype(self.spec.dtype) if self.device.startswith("cuda") else torch_dtype("float32")
        self.tokenizer = AutoTokenizer.from_pretrained(self.spec.path, trust_remote_code=remote)
        self.vocoder, self.speaker, self.encode_kwargs = None, None, {}
        self.kind = kind = model_type(self.spec.path)
        if kind is not None and kind not in SUPPORTED:
            raise ConfigError(f"model {self.spec.name!r} is a {kind} model; {self.task} runs {RUNS}")
        if kind == "bark":
            self.model = bark_speech.load(self.spec.path, dtype)
            self.sampling_rate = bark_speech.sampling_rate(self.model)
            self.max_tokens = bark_speech.max_text_tokens(self.model)
            self.encode_kwargs = bark_speech.encode_kwargs(self.model)
        elif kind == "speecht5":
            self.model = transformers.SpeechT5ForTextToSpeech.from_pretrained(self.spec.path, dtype=dtype)
            self.vocoder = _vocoder(self.spec, dtype).to(self.device).eval()
            self.sampling_rate = int(self.vocoder.config.sampling_rate)
            self.max_tokens = int(self.model.config.max_text_positions)
            if self.spec.options.get("speaker_embedding") is not None:
                self.speaker = load_embedding(beside(self.spec, str(self.spec.options["speaker_embedding"])))
        else:
            cls = transformers.AutoModelForTextToWaveform
            self.model = cls.from_pretrained(self.spec.path, dtype=dtype, trust_remote_code=remote)
            self.sampling_rate = int(self.model.config.sampling_rate)
            self.max_tokens = None
        self.model = self.model.to(self.device).eval()

    def preprocess(self, item: int, fields: dict[str, Any]) -> list[Feature]:
        (entry,) = self.preprocess_many([(item, fields)])
        if isinstance(entry, ItemResult):
            raise ItemError(entry.error or "preprocessing failed")
        return entry

    def preprocess_many(self, items: list[tuple[int, dict[str, Any]]]) -> list[list[Feature] | ItemResult]:
        """Every text tokenised in one call, as the pipeline tokenises it; an unusable item fails alone."""
        encoded = self.tokenizer([str(fields["text"]) for _, fields in items], **self.encode_kwargs)
        masks = encoded.get("attention_mask") or [[1] * len(ids) for ids in encoded["input_ids"]]
        out: list[list[Feature] | ItemResult] = []
        for (item, fields), ids, mask in zip(items, encoded["input_ids"], masks, strict=True):
            try:
                out.append([self.feature(item, fields, list(ids), list(mask))])
            except ItemError as exc:
                out.append(ItemResult(item=item, error=str(exc)))
        return out

    def feature(self, item: int, fields: dict[str, Any], ids: list[int], mask: list[int]) -> Feature:
        """One item's tokens (Bark's padded as its processor pads them; ``length`` counts the text's)."""
        length = sum(mask)
        if not length:
            raise ItemError("the text has nothing this model's tokenizer can speak")
        if self.max_tokens and length > self.max_tokens:
            raise ItemError(f"the text is {length} tokens, over the model's {self.max_tokens}; split it")
        speaker = fields.get("speaker_embedding")
        if self.vocoder is not None:
            speaker = speaker if speaker is not None else self.speaker
            size = int(self.model.config.speaker_embedding_dim)
            if speaker is None or len(speaker) != size:
                got = "none" if speaker is None else f"{len(speaker)} floats"
                raise ItemError(f"speaker_embedding must hold {size} floats for this model, got {got}")
        meta = {"seed": item_seed(int(fields.get("seed") or 0), item), "speaker": speaker}
        return Feature(item=item, ids={"input_ids": ids, "attention_mask": mask}, length=length, meta=meta)

    def collate(self, features: list[Feature]) -> dict[str, Any]:
        """No padding between items: every item runs alone (see the module docstring)."""
        import torch

        def row(f: Feature, key: str) -> Any:
            return torch.tensor([f.ids[key]], device=self.device)

        return {"rows": [(row(f, "input_ids"), row(f, "attention_mask"), f.meta) for f in features]}

    def forward(self, batch: dict[str, Any]) -> Any:
        return [self.speak(ids, mask, meta) for ids, mask, meta in batch["rows"]]

    def speak(self, ids: Any, mask: Any, meta: dict[str, Any]) -> np.ndarray:
        """One item's waveform (float32), seeded with its own seed."""
        import torch

        devices = [torch.device(self.device).index or 0] if self.device.startswith("cuda") else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(meta["seed"])
            if self.kind == "bark":
                waveform = bark_speech.generate(self.model, ids, mask)
            elif self.vocoder is None:
                waveform = self.model(input_ids=ids, attention_mask=mask).waveform
            else:
                speaker = torch.tensor([meta["speaker"]], dtype=self.model.dtype, device=self.device)
                spectrogram = self.model.generate(input_ids=ids, attention_mask=mask, speaker_embeddings=speaker)
                waveform = self.vocoder(spectrogram)
        return np.asarray(waveform.float().cpu().numpy().reshape(-1))

    def postprocess(self, features: list[Feature], outputs: Any) -> list[ItemResult]:
        return [self.result_for(f, waveform) for f, waveform in zip(features, outputs, strict=True)]

    def result_for(self, feature: Feature, waveform: np.ndarray) -> ItemResult:
        data = wav_bytes(waveform, self.sampling_rate)
        output = {"sampling_rate": self.sampling_rate, "n_samples": int(waveform.shape[0]),
                  "duration_s": round(waveform.shape[0] / self.sampling_rate, 6)}  # fmt: skip
        return ItemResult(item=feature.item, output=output, n_tokens=feature.length,
                          artifacts=[Artifact("audio/wav", data)])  # fmt: skip

    def release(self) -> None:
        self.model = self.vocoder = self.tokenizer = None


class TextToAudio(TextToSpeech):
    """The same family under the pipeline's other name."""

    task = "text-to-audio"


def wav_bytes(waveform: np.ndarray, sampling_rate: int) -> bytes:
    """Mono 16-bit PCM WAV of a float waveform (clipped to [-1, 1], scaled by 32767, rounded)."""
    pcm = np.round(np.clip(waveform, -1.0, 1.0) * 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sampling_rate)
        out.writeframes(pcm.tobytes())
    return buffer.getvalue()


def read_wav(data: bytes) -> tuple[np.ndarray, int]:
    """A WAV written by :func:`wav_bytes` as float samples in [-1, 1] and its sampling rate."""
    with wave.open(io.BytesIO(data), "rb") as source:
        rate, frames = source.getframerate(), source.readframes(source.getnframes())
    return np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32767, rate


@cache
def model_type(path: str) -> str | None:
    """``model_type`` from a local model directory's ``config.json`` (None where it cannot be read)."""
    try:
        config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    kind = config.get("model_type") if isinstance(config, dict) else None
    return kind if isinstance(kind, str) else None


def load_embedding(path: str) -> list[float]:
    """A speaker embedding file: ``.npy`` (no pickles) or a JSON list of floats."""
    try:
        if path.endswith(".npy"):
            values = np.load(path, allow_pickle=False).astype(np.float64).reshape(-1).tolist()
        else:
            values = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"speaker_embedding {path!r} cannot be read: {exc}") from exc
    if _embedding_problem(values):
        raise ConfigError(f"speaker_embedding {path!r} {_embedding_problem(values)}")
    return [float(v) for v in values]


def beside(spec: ModelSpec, path: str) -> str:
    """A registry file option: as resolved (relative to the TOML file), else inside the model directory."""
    inside = Path(spec.path) / path
    return str(inside) if not Path(path).exists() and inside.exists() else path


def _vocoder(spec: ModelSpec, dtype: Any) -> Any:
    from transformers import SpeechT5HifiGan

    path = beside(spec, str(spec.options["vocoder"])) if spec.options.get("vocoder") is not None else None
    if path is None or not Path(path).is_dir():
        raise ConfigError(
            f"model {spec.name!r} (SpeechT5) needs its HiFi-GAN vocoder as a local directory: add "
            f'vocoder = "DIR" to the registry entry (got {path!r}); Sluice never downloads it'
        )
    return SpeechT5HifiGan.from_pretrained(path, dtype=dtype)


def _embedding_problem(value: Any) -> str | None:
    good = isinstance(value, list) and 0 < len(value) <= MAX_EMBEDDING
    if good and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        return None
    return f"must be a list of 1 to {MAX_EMBEDDING} finite numbers"


def _check_options(fields: dict[str, Any], where: str) -> None:
    seed = fields.get("seed")
    if seed is not None and (problem := RULES["seed"].problem(seed)):
        raise ValidationError(f"{where}: 'seed' {problem}, got {seed!r}")
    speaker = fields.get("speaker_embedding")
    if speaker is not None and (problem := _embedding_problem(speaker)):
        raise ValidationError(f"{where}: 'speaker_embedding' {problem}")
