"""The one error tree of OpenPCC.

::

    OpenPCCError
     ├── ParseError          bytes that cannot be what they claim to be (report, cert, bhttp, note)
     ├── VerificationError   a signature, chain, binding or proof does not verify (names the check)
     ├── PolicyError         evidence is genuine but violates policy (carries every violation)
     ├── TransportError      network or server failure outside the trust decision
     └── DecryptError        any HPKE/AEAD/decapsulation failure, deliberately opaque

CLIs map each class to its own exit code (see ``EXIT_CODES``) and print one line plus a hint.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "EXIT_CODES",
    "DecryptError",
    "OpenPCCError",
    "ParseError",
    "PolicyError",
    "TransportError",
    "VerificationError",
    "exit_code_for",
]


class OpenPCCError(Exception):
    """Base of every error OpenPCC raises on purpose."""

    hint: str = ""

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        if hint:
            self.hint = hint


class ParseError(OpenPCCError):
    """Malformed input: wrong size, unknown version, must-be-zero bytes set, bad encoding."""


class VerificationError(OpenPCCError):
    """A cryptographic check failed. ``check`` names it (e.g. ``"signature"``, ``"chain"``)."""

    def __init__(self, check: str, message: str, *, hint: str = "") -> None:
        super().__init__(f"{check}: {message}", hint=hint)
        self.check = check
        self.detail = message


class PolicyError(OpenPCCError):
    """Genuine evidence that the policy refuses. ``violations`` lists every one of them."""

    def __init__(self, violations: Sequence[str], *, check: str = "policy", hint: str = "") -> None:
        self.violations = tuple(violations)
        self.check = check
        super().__init__(f"{check}: " + "; ".join(self.violations), hint=hint)


class TransportError(OpenPCCError):
    """The network or the server failed; nothing was decided about trust."""


class DecryptError(OpenPCCError):
    """Decryption or decapsulation failed. Deliberately says nothing more."""

    def __init__(self, message: str = "decryption failed") -> None:
        super().__init__(message)


EXIT_CODES: dict[type[OpenPCCError], int] = {
    TransportError: 2,
    ParseError: 3,
    VerificationError: 4,
    PolicyError: 5,
    DecryptError: 6,
}


def exit_code_for(error: OpenPCCError) -> int:
    """The process exit code a CLI uses for ``error`` (1 for anything unlisted)."""
    for cls in type(error).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return 1
