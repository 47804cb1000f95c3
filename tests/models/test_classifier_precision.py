"""Classifier.set_precision: the network runs in bf16/fp16, logits stay float32 and close to fp32."""

import pytest
import torch

from densepure.errors import ConfigError
from densepure.models.classifiers import Classifier, Preprocess
from densepure.models.digits import load_digits_classifier, load_digits_test_split


def test_bf16_classifier_agrees_with_fp32_on_digits():
    images, _ = load_digits_test_split()
    x = images * 2 - 1
    ref = Classifier(load_digits_classifier(), Preprocess(), num_classes=10)
    low = Classifier(load_digits_classifier(), Preprocess(), num_classes=10).set_precision(torch.bfloat16)
    assert next(low.network.parameters()).dtype is torch.bfloat16
    with torch.no_grad():
        a, b = ref(x), low(x)
    assert b.dtype is torch.float32
    agree = (a.argmax(1) == b.argmax(1)).float().mean().item()
    assert agree >= 0.99, agree  # measured: 450/450 (bf16 keeps 8 bits of mantissa; logits differ ~1e-2)
    with pytest.raises(ConfigError, match="unsupported classifier precision"):
        low.set_precision(torch.int8)
