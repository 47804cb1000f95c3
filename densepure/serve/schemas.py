"""Pydantic models that document the protocol in the OpenAPI schema (``/docs``); requests are parsed by
:mod:`densepure.serve.protocol`, which also reads the binary extension, not by these."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class RequestInput(BaseModel):
    name: Literal["image"]
    datatype: Literal["FP32", "UINT8"] = Field(description="FP32 in [0, 1], or UINT8 0..255")
    shape: list[int] = Field(description="[B, C, H, W] of the model's preset, e.g. [B, 1, 8, 8] for digits")
    data: list[Any] | None = Field(None, description="row-major values, flat or nested")
    parameters: dict[str, int] | None = Field(None, description='binary extension: {"binary_data_size": bytes}')


class RequestOutput(BaseModel):
    name: Literal["label", "certified", "radius", "draws", "counts"]
    parameters: dict[str, bool] | None = Field(None, description='{"binary_data": true} for raw bytes')


class InferenceRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = Field(None, description=(
        "mode: certify_radius (default) | certify | predict; alpha (<= the server's); n0; n; radius "
        "(certify_radius, default sigma); deadline_ms; seed and noise_id (only with --allow-client-seed); "
        "binary_data_output"))
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = Field(None, description="default: every output of the mode")


class ResponseOutput(BaseModel):
    name: str
    datatype: Literal["INT64", "FP32", "BOOL"]
    shape: list[int]
    data: list[Any] | None = None
    parameters: dict[str, int] | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    parameters: dict[str, Any] = Field(description="mode, smoothing, sigma, K, b, alpha, method, n0, n, radius")
    outputs: list[ResponseOutput] = Field(description="label INT64 [B] (-1 abstains), certified BOOL [B] "
                                                      "(certify_radius), radius FP32 [B], draws INT64 [B]")


class ErrorResponse(BaseModel):
    error: str


class JobState(BaseModel):
    id: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    created: str | None = None
    images: int | None = None
    draws: int | None = None
    anytime: list[dict | None] | None = None  # certify_anytime: each image's certificate so far (label, radius, ...)
    result: InferenceResponse | None = None
    error: str | None = None


DOC_MODELS = (InferenceRequest, InferenceResponse, ErrorResponse, JobState)
