"""Exception hierarchy of guanaco_rt.

Owns: every error type the package raises on purpose. Messages carry the numbers:
the file, the field or tensor, the value found and the limit it broke.
"""


class GuanacoError(Exception):
    """Base class of every error raised by guanaco_rt on purpose."""


class FormatError(GuanacoError, ValueError):
    """A model file is malformed, truncated, of an unsupported version, or inconsistent."""

    def __init__(self, path, field, message):
        self.path = str(path)
        self.field = field
        super().__init__(f"{self.path}: {field}: {message}")


class UnsupportedVersionError(FormatError):
    """A recognised but unsupported ggml container (ggml, ggmf, ggjt v1/v2, GGUF)."""


class Cancelled(GuanacoError):
    """Session.eval() was interrupted by cancel(); the cache keeps every complete batch."""


class ContextFullError(GuanacoError):
    """The session's context window cannot take more tokens under the 'error' policy."""


class SessionBusyError(GuanacoError, RuntimeError):
    """A session is already in use by another thread."""


class StateError(GuanacoError, ValueError):
    """A saved session state is malformed or belongs to another model."""


class ModelClosedError(GuanacoError):
    """A Model (or Session) was used after close()."""


class ModelFileChangedError(GuanacoError):
    """The file under a memory-mapped Model was truncated, replaced or modified."""


class InvalidRequestError(GuanacoError, ValueError):
    """An OpenAI-shaped request (guanaco_rt.api, the server) has a bad parameter: ``param``
    names it, ``code`` is OpenAI's error code where one applies (context_length_exceeded)."""

    def __init__(self, message, param=None, code=None):
        self.param = param
        self.code = code
        super().__init__(message)


class ChatTemplateError(GuanacoError, ValueError):
    """A chat template does not parse, fails while rendering, renders nothing, or goes
    over its time or size limit (the message names which)."""


class InvalidArgumentError(GuanacoError, ValueError):
    """A Session argument is out of range or not representable; ``param`` names it."""

    def __init__(self, message, param=None):
        self.param = param
        super().__init__(message)


class ConstraintError(InvalidArgumentError):
    """A constraint (json_schema, regex, grammar, choices) that cannot be compiled or goes
    over a limit; ``param`` names which, the message what the engine refused."""


class AdapterError(FormatError):
    """A LoRA adapter file is malformed, or does not fit the model it is applied to (a
    tensor of other shape, a missing A or B, ranks that differ, a tensor the model lacks or
    this runtime does not adapt); ``field`` names the tensor or header field."""
