"""Errors a user can act on: each says what is wrong and what to do about it."""


class MMFuseError(Exception):
    """Base class: the CLI prints these as one clear message instead of a traceback."""


class ConfigError(MMFuseError):
    """params.yaml (or an override) holds a value the pipeline cannot use."""


class ChecksumError(MMFuseError):
    """A source file's sha256 does not match the expected sum that ships with the code."""


class SourceError(MMFuseError):
    """A source could not be fetched, or an archive is truncated or corrupt."""


class ManifestError(MMFuseError):
    """A manifest breaks the contract (missing columns, unsafe paths, empty rows, ...)."""


class ValidationFailed(MMFuseError):
    """A critical data expectation failed; the pipeline must not go on with this data."""


class NonFiniteError(MMFuseError):
    """A loss, gradient or model output is NaN or infinite: numbers no one may act on.

    `where` names what went non-finite ("loss", "gradient", "probabilities"), so callers
    (training, the service, monitoring) can report it without parsing the message.
    """

    def __init__(self, message: str, where: str) -> None:
        super().__init__(message, where)
        self.message = message
        self.where = where

    def __str__(self) -> str:
        return self.message


class MediaError(MMFuseError):
    """A media file or payload cannot be decoded or is out of the accepted range.

    `modality` ("image", "audio", "text") is the input at fault, so the service can blame
    the right request field without parsing the message; None when the error is about no
    single modality (e.g. a summary of many bad records). `str(exc)` still reads
    "<modality>: <message>", the line the CLI and validation reports print.
    """

    def __init__(self, message: str, modality: str | None = None) -> None:
        super().__init__(message, modality)  # both in args: the error pickles (worker processes) intact
        self.message = message
        self.modality = modality

    def __str__(self) -> str:
        return f"{self.modality}: {self.message}" if self.modality else self.message
