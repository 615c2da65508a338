"""ctypes binding to libnftables (Debian ``libnftables1``): one context, JSON in and out.

Each :meth:`Libnft.run` is one ``nft_run_cmd_from_buffer`` call, which nft runs
as one netlink transaction: every command of the batch takes effect, or none
does. Batching matters beyond atomicity: libnftables reloads its cache of the
table for every call, which costs milliseconds once the table holds thousands
of elements (docs/kernel.md, "Background").

The context's netlink socket belongs to the network namespace of the thread
that created it; use one :class:`Libnft` per namespace.

:meth:`Libnft.run_script` takes nft's own syntax. It exists for one thing only:
libnftables 1.0.6's JSON parser cannot declare a map whose *data* is a
concatenation (``: ipv4_addr . inet_service``): a list there is silently
ignored and a plain set is created instead (fixed upstream in 1.0.10). Those
declarations are constant text built by :mod:`relayd.nft.ruleset`; everything that
carries per-stream values goes through JSON.
"""

from __future__ import annotations

import ctypes
import json
import threading
from collections.abc import Sequence
from typing import Any

__all__ = ["DEFAULT_LIBRARY", "Libnft", "NftError"]

DEFAULT_LIBRARY = "libnftables.so.1"

# enum nft_output_flags (libnftables(3))
_OUTPUT_HANDLE = 1 << 3
_OUTPUT_JSON = 1 << 4


class NftError(RuntimeError):
    """nftables is missing, refused a command or is unusable; the text is nft's own message."""


class Libnft:
    """A libnftables context with buffered output and error streams."""

    def __init__(self, library: str = DEFAULT_LIBRARY) -> None:
        try:
            lib = ctypes.CDLL(library)
        except OSError as exc:
            raise NftError(f"cannot load {library}: {exc}") from exc
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.restype = None
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_set_flags.restype = None
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
            getattr(lib, name).restype = ctypes.c_int
            getattr(lib, name).argtypes = [ctypes.c_void_p]
        for name in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
            getattr(lib, name).restype = ctypes.c_char_p
            getattr(lib, name).argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self._lib = lib
        self._lock = threading.Lock()
        self._ctx: int | None = lib.nft_ctx_new(0)  # NFT_CTX_DEFAULT
        if not self._ctx:
            raise NftError("nft_ctx_new failed")
        lib.nft_ctx_output_set_flags(self._ctx, _OUTPUT_JSON | _OUTPUT_HANDLE)
        if lib.nft_ctx_buffer_output(self._ctx) or lib.nft_ctx_buffer_error(self._ctx):
            self.close()
            raise NftError("cannot buffer libnftables output")

    def run(self, commands: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
        """Run commands as one transaction; return the parsed JSON output, if any."""
        if not commands:
            return None
        text = self._run(json.dumps({"nftables": list(commands)}, separators=(",", ":")))
        if not text.strip():
            return None
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise NftError(f"unparsable nft output: {text[:200]!r}") from exc
        if not isinstance(doc, dict):
            raise NftError(f"unexpected nft output: {text[:200]!r}")
        return doc

    def run_script(self, script: str) -> None:
        """Run constant nft syntax (see the module docstring for the one reason)."""
        self._run(script)

    def _run(self, buffer: str) -> str:
        with self._lock:
            if self._ctx is None:
                raise NftError("libnftables context is closed")
            rc = self._lib.nft_run_cmd_from_buffer(self._ctx, buffer.encode())
            output = self._lib.nft_ctx_get_output_buffer(self._ctx) or b""
            error = self._lib.nft_ctx_get_error_buffer(self._ctx) or b""
        if rc != 0:
            message = error.decode(errors="replace").strip() or f"nft failed (rc={rc})"
            raise NftError(message)
        return output.decode(errors="replace")

    def close(self) -> None:
        with self._lock:
            if self._ctx is not None:
                self._lib.nft_ctx_free(self._ctx)
                self._ctx = None

    def __enter__(self) -> Libnft:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        ctx, self._ctx = getattr(self, "_ctx", None), None
        if ctx is not None:
            self._lib.nft_ctx_free(ctx)
