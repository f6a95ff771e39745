"""The API's pydantic models: what ``POST /v1/predict`` answers, per image, and the error body.

The request body is parsed by hand (JSON or multipart in one endpoint, with size limits before
any parsing); ``PREDICT_REQUEST_BODY`` documents both forms in the OpenAPI schema.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

__all__ = ["ImageAnswer", "PredictResponse", "ErrorResponse", "HealthResponse", "PREDICT_REQUEST_BODY",
           "NPY_MEDIA_TYPE"]

NPY_MEDIA_TYPE = "application/x-npy"


class ImageAnswer(BaseModel):
    """The answer for one image of the request, in request order (``index``)."""

    index: int = Field(description="position of the image in the request")
    status: Literal["accepted", "refused"]
    accepted: bool
    label: int | None = Field(description="predicted class; for a refusal, what the bare classifier "
                                          "would answer; null when a smoothed classifier abstained")
    class_name: str | None = Field(description="name of the class, when the model records class names")
    probabilities: list[float] = Field(description="softmax probabilities (smoothed: class frequencies under noise)")
    score: float | None = Field(description="reliability score, higher = less reliable (guard only; "
                                          "null when unscorable or no guard)")
    threshold: float | None = Field(description="the guard's calibrated threshold (guard only)")
    reason: str | None = Field(description="why the image was refused; null when accepted")
    radius: float | None = Field(None, description="certified L2 radius (smoothed only; 0 when abstained)")
    abstained: bool | None = Field(None, description="the smoothed classifier abstained (smoothed only)")


class PredictResponse(BaseModel):
    kind: Literal["guard", "model", "smoothed"] = Field(description="what answers: a guarded, a bare or a smoothed classifier")
    n: int
    predictions: list[ImageAnswer]


class ErrorResponse(BaseModel):
    detail: str = Field(description="what was wrong and what to do")


class HealthResponse(BaseModel):
    status: str
    ready: bool


PREDICT_REQUEST_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {"schema": {
            "type": "object",
            "required": ["images"],
            "properties": {"images": {
                "type": "array", "minItems": 1,
                "description": "N×C×H×W or (one channel) N×H×W nested arrays of numbers in [0, 1], "
                               "in the model's input shape",
                "items": {"type": "array", "items": {"type": "array"}},
            }},
        }},
        NPY_MEDIA_TYPE: {"schema": {
            "type": "string", "format": "binary",
            "description": "the same images as one NumPy .npy array (np.save; float32 or float64, "
                           "N×C×H×W or N×H×W, in [0, 1]), read without pickle: the fast form for batches",
        }},
        "multipart/form-data": {"schema": {
            "type": "object",
            "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"},
                                     "description": "one or several PNG or JPEG files (any field name); "
                                                    "converted to the model's channels and resized"}},
        }},
    },
}
