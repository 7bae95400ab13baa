"""Typed errors of the core. Every one is a ValueError, so callers that only know the standard
library still catch them; the serving and batch layers map them to status codes and error rows."""

from __future__ import annotations


class InputError(ValueError):
    """One input item breaks a rule. `index` is its position in the call (None when unknown)."""

    def __init__(self, reason: str, index: int | None = None, code: str = "invalid_input"):
        self.reason = reason
        self.index = index
        self.code = code
        where = f"input[{index}]: " if index is not None else ""
        super().__init__(f"{where}{reason}")

    def at(self, index: int) -> InputError:
        """The same error, located at `index`."""
        return InputError(self.reason, index, self.code)


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


class DimensionError(ValueError):
    """A requested output dimension is outside the model's MRL range."""


class UnsupportedModelError(ValueError):
    """The checkpoint's model_type is not one this project embeds with."""


class MissingExtraError(ImportError):
    """An optional dependency group is needed for what was asked."""
