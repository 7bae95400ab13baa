"""One error vocabulary: every error class the project defines derives from `Qwen3EmbedError`
with a stable code; the core keeps the codes, and the HTTP API answers them from one table that
lives with Serve (`deployments.api_answers`)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

from qwen3_embed.errors import (
    DecodeLimitError,
    DimensionError,
    InputError,
    InputTooLargeForDeviceError,
    InputTooLongError,
    Qwen3EmbedError,
)

PACKAGES = ("qwen3_embed", "qwen3_embed_layers", "pipelines", "deployments")


def project_exception_classes() -> list[type[BaseException]]:
    found = []
    for package in PACKAGES:
        root = importlib.import_module(package)
        for info in pkgutil.walk_packages(root.__path__, prefix=f"{package}."):
            if info.name.endswith("__main__"):
                continue  # `python -m` entry points run the CLI when imported
            module = importlib.import_module(info.name)
            for _, cls in inspect.getmembers(module, inspect.isclass):
                if issubclass(cls, BaseException) and cls.__module__ == module.__name__:
                    found.append(cls)
    return found


def test_every_project_error_is_a_qwen3_embed_error_with_a_code():
    classes = project_exception_classes()
    names = {cls.__name__ for cls in classes}
    # The ones the layers used to define on their own.
    assert {"ApiError", "FetchRefused", "StageBroken", "StaleWriterError"} <= names, names
    assert "OutputMismatchError" in names and "MissingExtraError" in names, names
    assert {"InvalidConfigError", "LayerNotInstalledError"} <= names, names
    for cls in classes:
        assert issubclass(cls, Qwen3EmbedError), cls
        # A class-level code, or one every instance sets (ApiError, FetchRefused, InputError).
        assert isinstance(cls.code, str) and cls.code, cls


def test_errors_keep_their_standard_library_bases():
    from deployments.media_fetch import FetchRefused
    from pipelines.failure_layers import StageBroken
    from pipelines.resume import OutputMismatchError
    from pipelines.sink import StaleWriterError
    from qwen3_embed.errors import MissingExtraError

    assert issubclass(InputError, ValueError) and issubclass(DimensionError, ValueError)
    assert issubclass(MissingExtraError, ImportError)
    assert issubclass(StageBroken, RuntimeError) and issubclass(StaleWriterError, RuntimeError)
    assert issubclass(OutputMismatchError, ValueError)
    assert FetchRefused("refused", "media_url_refused", 403).code == "media_url_refused"


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (InputError("empty"), 400, "invalid_input"),
        (InputTooLongError("too long"), 400, "context_length_exceeded"),
        (InputTooLargeForDeviceError("out of memory alone"), 413, "input_too_large_for_device"),
        (DimensionError("dim 7 < 32"), 400, "invalid_dimensions"),
        (DecodeLimitError("too many frames to decode"), 413, "decode_limit_exceeded"),
    ],
)
def test_the_api_answers_core_errors_from_the_table(error, status, code):
    from deployments.api_answers import API_ANSWERS, api_answer
    from deployments.protocol import EmbedFailure

    assert API_ANSWERS[error.code] == api_answer(error)
    failure = EmbedFailure.from_error(error)
    assert (failure.status, failure.code, failure.message) == (status, code, str(error))
    # The batch job writes the core's own code in its error rows.
    assert error.code != "error"


def test_every_input_error_code_has_an_api_answer():
    """The core's vocabulary of input error codes and Serve's table stay in step."""
    from deployments.api_answers import API_ANSWERS
    from qwen3_embed.vocabulary import INPUT_ERROR_CODES

    assert set(INPUT_ERROR_CODES) <= set(API_ANSWERS)
    assert not hasattr(importlib.import_module("qwen3_embed.errors"), "API_ANSWERS")
