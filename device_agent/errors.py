"""The typed error tree. Every error a user can cause is a ThomasError with a one-line message;
the CLIs print it and exit 1, never a traceback. `code` is what an `error` event carries."""


class ThomasError(Exception):
    """Base of every user-facing error."""

    exit_code = 1
    code = "error"


class PackageError(ThomasError, ValueError):
    """A model package is malformed (message names node and field)."""

    code = "bad_model"


class BackendError(ThomasError, ValueError):
    """Bad call into a backend (wrong feed shape, backward before forward, ...)."""

    code = "backend"


class ModelError(ThomasError, ValueError):
    """A model cannot be built as asked (unknown zoo name, size too small, bad head)."""

    code = "bad_model"


class JobError(ThomasError, ValueError):
    """A training job is invalid (message names the job field)."""

    code = "bad_job"


class DataError(ThomasError, ValueError):
    """A dataset is unusable (message names the file at fault)."""

    code = "bad_data"


class CheckpointError(ThomasError):
    """No usable checkpoint where one is required."""

    code = "checkpoint"


class TrainError(ThomasError):
    """Training cannot go on (non-finite loss, ...); the last good checkpoint is kept."""

    code = "diverged"


class OnnxError(ThomasError, ValueError):
    """An ONNX file cannot be imported or a package cannot be exported (message names file, node, op)."""

    code = "onnx"


class InputError(ThomasError, ValueError):
    """An inference input cannot be used (unreadable image or array, wrong shape, empty folder)."""

    code = "bad_input"


class DiskError(ThomasError):
    """The device's storage refused a read or write: code "disk_full" (ENOSPC, EDQUOT) or "io"
    (read-only, no permission, I/O error, ...); the message names the path and the fix.
    fsutil.disk_error(OSError) builds one."""

    code = "io"

    def __init__(self, message: str, code: str = "io"):
        super().__init__(message)
        self.code = code


class RunLockedError(ThomasError):
    """A run is being trained by another live process (runlock.py); the message names its pid."""

    code = "locked"
