"""A model registered in-process, as transformers' custom-models guide does: importing this module
registers it. Registry entries reach it with ``register_module = "tests.unit.registered_model"``,
which the worker imports before ``from_pretrained`` (no ``trust_remote_code`` involved)."""

from __future__ import annotations

from transformers import AutoConfig, AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

MODEL_TYPE = "sluice-tiny-registered"


class TinyRegisteredConfig(BertConfig):
    model_type = MODEL_TYPE


class TinyRegisteredForSequenceClassification(BertForSequenceClassification):
    config_class = TinyRegisteredConfig


AutoConfig.register(MODEL_TYPE, TinyRegisteredConfig)
AutoModelForSequenceClassification.register(TinyRegisteredConfig, TinyRegisteredForSequenceClassification)
