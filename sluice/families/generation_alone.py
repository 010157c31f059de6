"""Items that run alone through ``model.generate`` itself: assisted decoding, prompt lookup and
custom generation code.

transformers runs assisted decoding (``assistant_model``) and prompt lookup decoding
(``prompt_lookup_num_tokens``) for one sequence at a time, and custom generation code may assume
anything about its inputs; so such items are generated one per call, their padding removed, which
is exactly ``model.generate`` on the item alone. Sampled items seed the global generator with the
item's seed inside ``torch.random.fork_rng`` (so nothing else in the process sees it), as the
oracle ``torch.manual_seed(seed)`` before ``generate`` does. Scores come from ``output_scores``
(one row, so their size is harmless) through ``compute_transition_scores``.

**Assistants** are other registered models (``assistant_model`` names one), read from the
worker's registry (``settings.models_file``), loaded once with ``from_pretrained`` beside the main
model and kept while it is resident. Each call starts from the assistant's generation config as
loaded: transformers' "heuristic" schedule otherwise carries a changed ``num_assistant_tokens``
from one call to the next, and a sample would then depend on the items before it.

**Custom generation code** (``custom_generate = "DIR"`` in the registry entry, ``DIR`` holding
``custom_generate/generate.py`` as a Hub repository does) replaces ``generate`` for every item of
the entry: it is how transformers 5 serves contrastive search, diverse beam search and DoLa.
Nothing is downloaded. The entry must set ``trust_remote_code = true`` and pin the code with
``custom_generate_sha256`` (``sluice models hash DIR``: every ``*.py`` under ``DIR``). At load the
worker copies those files to a private directory, checks the copy's hash, and only ever gives
transformers the checked copy, so an edit to ``DIR`` afterwards cannot run.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sluice.errors import ConfigError
from sluice.families.generation_options import custom_generate_problem
from sluice.families.generation_scoring import Generated
from sluice.registry import ModelSpec, load_registry

if TYPE_CHECKING:
    from sluice.families.generation import GenerationFamily


def prepare_custom_generate(spec: ModelSpec) -> Path | None:
    """A checked private copy of the entry's ``custom_generate`` code (None when it has none)."""
    from sluice.remote_code import ModelCodeError, code_sha256

    directory = spec.options.get("custom_generate")
    if directory is None:
        return None
    problem = custom_generate_problem(spec)
    if problem:
        raise ModelCodeError(f"registry model {spec.name!r} {problem}")
    source = Path(str(directory))
    if not (source / "custom_generate" / "generate.py").is_file():
        raise ConfigError(f"model {spec.name!r}: custom_generate {str(source)!r} holds no custom_generate/generate.py")
    pinned = str(spec.options["custom_generate_sha256"]).lower()
    target = Path(tempfile.mkdtemp(prefix="sluice-custom-generate-")) / f"custom_generate_{pinned[:12]}"
    for path in source.rglob("*"):
        relative = path.relative_to(source)
        keep = path.suffix == ".py" or relative.as_posix() == "custom_generate/requirements.txt"
        if path.is_file() and keep and "__pycache__" not in relative.parts:
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target / relative)
    if code_sha256(target) != pinned:
        discard_custom_generate(target)
        raise ModelCodeError(
            f"model {spec.name!r}: the Python code in custom_generate {str(source)!r} does not match "
            "custom_generate_sha256, so it will not be run; if the change is intended and reviewed, run "
            "`sluice models hash DIR` and update the entry"
        )
    return target


def discard_custom_generate(target: Path | None) -> None:
    """Remove a copy made by :func:`prepare_custom_generate`."""
    if target is not None:
        shutil.rmtree(target.parent, ignore_errors=True)


def assistant(family: GenerationFamily, name: str) -> Any:
    """The registered model ``name``, loaded for ``family`` on its device on first use, its generation
    config reset to the one it was loaded with."""
    if name not in family.assistants:
        from sluice import remote_code
        from sluice.families.hf import load_model

        spec = load_registry(family.settings.models_file).get(name)
        remote_code.prepare(spec)
        model = load_model(spec, family.auto_class, family.device)
        remote_code.verify(spec)
        family.assistants[name] = (model, copy.deepcopy(model.generation_config))
    model, config = family.assistants[name]
    model.generation_config = copy.deepcopy(config)
    return model


def generate_alone(family: GenerationFamily, inputs: dict[str, Any], options: dict[str, Any],
                   seed: int | None) -> list[Generated]:  # fmt: skip
    """One item's sequences from ``model.generate`` with ``options`` as given (see the module docstring)."""
    import torch
    from transformers import StoppingCriteriaList

    kwargs = family.call_options(options, batched=False)
    if kwargs.get("assistant_model") is not None:
        kwargs["assistant_model"] = assistant(family, str(kwargs["assistant_model"]))
    stops = options.get("stop_strings")
    if family.custom_generate is not None:
        kwargs.update(custom_generate=str(family.custom_generate), trust_remote_code=True)
        if stops:  # what custom code reads, if it stops at all
            kwargs.update(stop_strings=stops, tokenizer=family.tokenizer)
    elif stops:
        # The criterion generate(stop_strings=...) builds, given as such: with an assistant, transformers
        # (5.24) hands stop_strings on to the assistant's generate without a tokenizer, which raises
        # (huggingface/transformers#48039).
        kwargs["stopping_criteria"] = StoppingCriteriaList([family.stop_criterion(stops)])
    devices = [torch.device(family.device).index or 0] if family.device.startswith("cuda") else []
    with torch.random.fork_rng(devices=devices):
        if seed is not None:
            torch.manual_seed(seed)
        out = family.model.generate(**inputs, **kwargs, pad_token_id=family.pad_id, output_scores=True,
                                    return_dict_in_generate=True)  # fmt: skip
    sequences = out if isinstance(out, torch.Tensor) else out.sequences
    start = 1 if family.model.config.is_encoder_decoder else inputs["input_ids"].shape[1]
    new = sequences[:, start:]
    logprobs = transition_logprobs(family.model, out, sequences, (new.shape[0], new.shape[1]))
    hits = family.stop_criterion(stops)(sequences, None).tolist() if stops else [False] * new.shape[0]
    rows = new.tolist()
    stopped = [len(ids) if hit and not family.eos_ids & set(ids) else None for ids, hit in zip(rows, hits, strict=True)]
    return [Generated(ids, lps, at) for ids, lps, at in zip(rows, logprobs, stopped, strict=True)]


def transition_logprobs(model: Any, out: Any, sequences: Any, shape: tuple[int, int]) -> list[list[float]]:
    """Per sequence, each new token's log-probability (NaN where the code returned no scores)."""
    import math

    scores = getattr(out, "scores", None)
    if not scores:
        return [[math.nan] * shape[1] for _ in range(shape[0])]
    beams = getattr(out, "beam_indices", None)
    values = model.compute_transition_scores(sequences, scores, beams, normalize_logits=beams is None)
    return [row[-shape[1] :] if shape[1] else [] for row in values.float().cpu().tolist()]
