"""The project's one error vocabulary.

`Qwen3EmbedError` is the base of every error this project raises on purpose, in the core and in
both layers above it (the server's `ApiError` and `FetchRefused`, the batch job's `StageBroken`,
`StaleWriterError` and `OutputMismatchError`, the configs' `InvalidConfigError`); each has a
stable `code`. Each also keeps the standard library base it always had (ValueError, ImportError,
RuntimeError), so callers that only know those still catch it.

The core owns the codes and their vocabulary (`vocabulary.InputErrorCode`): a core error's
`code` is what a batch job writes in its `_errors` rows. How the HTTP API answers each code
(status and OpenAI-style code) is the Serve layer's one table (`API_ANSWERS`, beside its other
HTTP errors), so neither layer compares code strings or spells statuses of its own for them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .vocabulary import InputErrorCode


class Qwen3EmbedError(Exception):
    """Base of the project's errors; `code` names the rule that was broken, stably."""

    code: str = "error"


class InputError(Qwen3EmbedError, ValueError):
    """One input item breaks a rule. `index` is its position in the call (None when unknown)."""

    def __init__(
        self,
        reason: str,
        index: int | None = None,
        code: InputErrorCode = "invalid_input",
        field: str | None = None,
    ):
        self.reason = reason
        self.index = index
        self.code = code
        # The part at fault: of the item when `index` is set ("instruction", "text[1]"), else
        # of the call ("instruction", "prompt"); None = the item (or the inputs) as a whole.
        # The API names it in its error's `param` (`input[2].instruction`, `instruction`).
        self.field = field
        where = f"input[{index}]: " if index is not None else ""
        super().__init__(f"{where}{reason}")

    def at(self, index: int) -> InputError:
        """The same error, located at `index`."""
        return InputError(self.reason, index, self.code, self.field)


class InputTooLongError(InputError):
    """An input exceeds the model's max_length while truncation is off (the API's 400
    `context_length_exceeded`; a batch job's `input_too_long` error row)."""

    def __init__(self, reason: str, index: int | None = None):
        super().__init__(reason, index, code="input_too_long")

    def at(self, index: int) -> InputTooLongError:
        return InputTooLongError(self.reason, index)


class InputTooLargeForDeviceError(InputError):
    """An input ran out of device memory when embedded alone (its neighbours are unaffected)."""

    def __init__(self, reason: str, index: int | None = None):
        super().__init__(reason, index, code="input_too_large_for_device")

    def at(self, index: int) -> InputTooLargeForDeviceError:
        return InputTooLargeForDeviceError(self.reason, index)


class DecodeLimitError(InputError):
    """Decoding a video needs more work than one item may take (frames decoded, or seconds):
    the API's 413 `decode_limit_exceeded`; a batch job's error row of the same code."""

    def __init__(self, reason: str, index: int | None = None):
        super().__init__(reason, index, code="decode_limit_exceeded")

    def at(self, index: int) -> DecodeLimitError:
        return DecodeLimitError(self.reason, index)


class DimensionError(Qwen3EmbedError, ValueError):
    """A requested output dimension is outside the model's MRL range."""

    code = "invalid_dimensions"


class UnsupportedModelError(Qwen3EmbedError, ValueError):
    """The checkpoint's model_type is not one this project embeds with."""

    code = "unsupported_model"


class MissingExtraError(Qwen3EmbedError, ImportError):
    """An optional dependency group is needed for what was asked."""

    code = "missing_extra"
